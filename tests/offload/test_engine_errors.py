"""The engine's refusals carry a reason in words."""

from __future__ import annotations

import pytest
from conftest import require_offload

from stunner_dp.offload import OffloadEngine, OffloadError, engine, offload_unavailable_reason
from stunner_dp.offload import libbpf as bpf


def test_unprivileged_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "_cap_effective", lambda: 0)
    assert offload_unavailable_reason() == \
        "not permitted (needs CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN, or root)"
    with pytest.raises(OffloadError, match="not permitted"):
        OffloadEngine.load(["lo"])


def test_bpf_and_net_admin_without_perfmon_is_not_enough(monkeypatch: pytest.MonkeyPatch) -> None:
    caps = (1 << engine._CAP_BPF) | (1 << engine._CAP_NET_ADMIN)
    monkeypatch.setattr(engine, "_cap_effective", lambda: caps)
    assert "CAP_PERFMON" in (offload_unavailable_reason() or "")
    monkeypatch.setattr(engine, "_cap_effective", lambda: caps | (1 << engine._CAP_PERFMON))
    reason = offload_unavailable_reason()
    assert reason is None or "not permitted" not in reason


def test_old_kernel_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "_kernel_version", lambda: (5, 10))
    assert "too old" in (offload_unavailable_reason() or "")


def test_unknown_interface() -> None:
    require_offload()
    with pytest.raises(OffloadError, match="no interface named"):
        OffloadEngine.load(["sdp-nonexistent"])


def test_garbage_object_is_refused_with_a_reason() -> None:
    require_offload()
    with pytest.raises(OffloadError, match="opening the BPF object failed"):
        bpf.BpfObject(b"\x7fELF not really")


def test_tiny_map_fills_up() -> None:
    require_offload()
    with OffloadEngine.load(["lo"], max_channels=2) as e:
        h = "127.0.0.1"
        e.add_channel((h, 41001), (h, 41000), 0x4000, (h, 41101), (h, 41201))
        e.add_channel((h, 41002), (h, 41000), 0x4000, (h, 41102), (h, 41202))
        with pytest.raises(OffloadError, match="in use"):
            e.add_channel((h, 41003), (h, 41000), 0x4000, (h, 41103), (h, 41203))
        assert e.entries == 2
    assert e.closed

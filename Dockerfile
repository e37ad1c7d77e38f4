# syntax=docker/dockerfile:1
# stunner-dp: the dataplane image (a drop-in for STUNner's stunnerd).
#
#   docker build -t stunner-dp .
#   docker build --secret id=pip_cert,src=/etc/ssl/certs/ca-certificates.crt -t stunner-dp .
#                                                 (behind a TLS-intercepting proxy)
#   buildah bud --build-arg BASE=localhost/my-python:3.11 ...   (any Debian-like base with python3 + venv)
#
# Stage 1 builds wheels of the project and all its dependencies; stage 2 installs only
# those wheels (no compiler, no index) into a virtualenv and runs as an unprivileged user; its
# one Debian package is libbpf1, for the kernel fast path.

ARG BASE=docker.io/library/python:3.11-slim-bookworm

FROM ${BASE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python3 -m venv /opt/build
COPY pyproject.toml README.md ./
COPY stunner_dp ./stunner_dp
# pip trusts the CA bundle from the optional build secret `pip_cert` (only when non-empty).
RUN --mount=type=secret,id=pip_cert,target=/run/secrets/pip_cert \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi; \
    /opt/build/bin/pip wheel --prefer-binary --wheel-dir /wheels .

FROM ${BASE}
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="stunner-dp" \
      org.opencontainers.image.description="TURN/STUN server on asyncio + uvloop: a drop-in dataplane for STUNner" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.vendor="stunner-dp"
# libbpf1 (libelf1 comes with it): the kernel fast path (admin.offload_engine) loads
# libbpf.so.1 with ctypes at run time. The only package the runtime stage installs, pinned to
# Debian 12's 1.1 series (what the loader is tested with; a point release keeps building).
# Another Debian-like base: --build-arg LIBBPF_VERSION=<its libbpf1 1.x version>.
ARG LIBBPF_VERSION=1:1.1.*
RUN apt-get update \
    && apt-get install --yes --no-install-recommends "libbpf1=${LIBBPF_VERSION}" \
    && rm -rf /var/lib/apt/lists/*
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
# Install from the builder's wheels only (no index), then drop pip/setuptools from the runtime venv.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-index --find-links=/wheels stunner-dp \
    && /opt/venv/bin/pip uninstall --yes pip setuptools \
    && groupadd --gid 10001 stunner \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin stunner \
    && stunnerd --version
COPY config/stunnerd.yaml /etc/stunner/stunnerd.yaml
USER 10001:10001
WORKDIR /tmp
# TURN (UDP and TCP), Prometheus metrics, health (/live, /ready, /status)
EXPOSE 3478/udp 3478/tcp 8080 8086
HEALTHCHECK --interval=15s --timeout=2s --start-period=5s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8086/live', timeout=1.5)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["stunnerd"]
CMD ["-c", "/etc/stunner/stunnerd.yaml"]

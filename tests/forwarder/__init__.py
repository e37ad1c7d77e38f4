"""Tests of the compiled user-space forwarder (stunner_dp/forwarder, stunner_dp/net/forwarder.py).

A package (unlike tests/offload) so that its module names (test_build, ...) cannot clash with
another folder's under pytest's default import mode."""

"""Shared test setup. The `turn_server` fixture and its helpers come from the stunner_dp.testing
plugin (registered through the pytest11 entry point); helper modules shared by several test
folders live in the `helpers` package (tests/ is on pytest's `pythonpath`)."""

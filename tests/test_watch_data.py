"""The master's watch of its datasets (appended items, new labels) says when it fails and
when it recovers, once each, and keeps watching (issue 24: it swallowed every error)."""

from __future__ import annotations

import logging

from conftest import wait_for
from test_learning_integration import FC_SPEC
from test_master_integration import create_project, upload

from mlitb.master.server import runner as runner_module


def test_a_failing_dataset_check_is_logged_once_and_its_recovery_too(master, mnist_zips, monkeypatch, caplog):
    train, test = upload(master.data, mnist_zips)
    create_project(master.url, "watched", [train], [test], spec=FC_SPEC, start=False)
    runner = master.manager.runners["watched"]
    monkeypatch.setattr(runner_module, "DATA_POLL_S", 0.05)
    honest = runner.data_lookup
    calls = {"n": 0}

    async def failing(source):
        calls["n"] += 1
        raise ConnectionError("data server down")

    with caplog.at_level(logging.INFO, logger="mlitb.master"):
        runner.data_lookup = failing
        wait_for(lambda: calls["n"] >= 10, 60, "ten failed checks")
        runner.data_lookup = honest
        wait_for(lambda: any("answers again" in r.getMessage() for r in caplog.records), 60, "the recovery")
    failed = [r for r in caplog.records if "not checked for new items" in r.getMessage()]
    assert len(failed) == 2, [r.getMessage() for r in failed]  # once per dataset (train and test)
    assert "data server down" in failed[0].getMessage()

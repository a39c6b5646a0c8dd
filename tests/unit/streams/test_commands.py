"""The stream's CLI commands fail with one line on user errors, before touching any service."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.cli import main


def test_worker_without_a_bundle_says_how_to_train(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["worker", "--bundle", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "riskmon train" in err


def test_replay_rejects_a_folder_without_invoices(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", "--data", str(tmp_path)]) == 2
    assert "invoices.csv" in capsys.readouterr().err


def test_replay_rejects_a_bad_rate(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", "--rate", "0"]) == 2
    assert "--rate must be positive" in capsys.readouterr().err


def test_invalid_settings_are_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("RISKMON_ALLOCATOR__SOLVER", "magic")
    assert main(["topics", "list"]) == 2
    assert "allocator" in capsys.readouterr().err


def test_topics_list_follows_settings(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("RISKMON_TOPICS__CREDIT_LINES", "bank-lines")
    monkeypatch.setenv("RISKMON_TOPICS__PARTITIONS", "8")
    assert main(["topics", "list"]) == 0
    out = capsys.readouterr().out
    assert "bank-lines\tpartitions=8\treplication=1\tcompact" in out
    assert "invoices\tpartitions=8\treplication=1\tdelete" in out


def test_topics_on_a_three_broker_cluster(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("RISKMON_TOPICS__REPLICATION", "3")
    monkeypatch.setenv("RISKMON_TOPICS__MIN_INSYNC_REPLICAS", "2")
    assert main(["topics", "list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 6 and all("\treplication=3\t" in line and line.endswith("\tmin.insync.replicas=2") for line in out)


def test_min_insync_above_replication_is_one_line(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("RISKMON_TOPICS__MIN_INSYNC_REPLICAS", "2")  # replication stays 1
    assert main(["topics", "create"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "min_insync_replicas (2) exceeds topics.replication (1)" in err


async def test_producers_are_idempotent_with_acks_all() -> None:
    from streams.adapters.kafka import make_producer
    from streams.settings import KafkaSettings

    producer = make_producer(KafkaSettings())  # not started: no broker needed
    assert producer._txn_manager is not None and producer._sender._acks == -1  # noqa: SLF001 - aiokafka keeps both private


def test_settings_read_nested_env_and_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    from streams.adapters.kafka import client_kwargs
    from streams.settings import Settings

    monkeypatch.setenv("RISKMON_KAFKA__BOOTSTRAP", "broker:9093")
    monkeypatch.setenv("RISKMON_KAFKA__SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("RISKMON_KAFKA__SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("RISKMON_KAFKA__SASL_USERNAME", "bank")
    monkeypatch.setenv("RISKMON_KAFKA__SASL_PASSWORD", "s3cret")
    monkeypatch.setenv("RISKMON_REDIS__PASSWORD", "r3dis")
    monkeypatch.setenv("RISKMON_ALLOCATOR__BUDGET_YUAN", "7e7")
    s = Settings()
    assert "s3cret" not in repr(s) and "r3dis" not in repr(s)
    assert s.allocator.budget_yuan == 70_000_000
    kw = client_kwargs(s.kafka)
    assert kw["bootstrap_servers"] == "broker:9093" and kw["sasl_mechanism"] == "SCRAM-SHA-512"
    assert kw["sasl_plain_password"] == "s3cret" and kw["security_protocol"] == "SASL_PLAINTEXT"

"""The short version of the crash harness (tests/crash_harness.py runs the long one)."""

from crash_harness import run

from helpers import require_redis


def test_repeated_sigkill_loses_nothing_accepted_and_delivers_nothing_refused(tmp_path):
    result = run(tmp_path, kills=3, seed=7, log=lambda text: None)
    assert result["accepted"] > 50
    assert result["lostBroadcast"] == 0, result
    assert result["lostGroup"] == 0, result
    assert result["refusedDelivered"] == 0, result
    assert result["outOfOrder"] == 0, result


def test_sigkill_of_processes_sharing_redis_loses_nothing_accepted(tmp_path):
    require_redis()
    result = run(tmp_path, kills=3, seed=11, log=lambda text: None, engine="redis")
    assert result["accepted"] > 50
    assert result["lostBroadcast"] == 0, result
    assert result["lostGroup"] == 0, result
    assert result["refusedDelivered"] == 0, result
    assert result["outOfOrder"] == 0, result

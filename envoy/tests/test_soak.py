"""A short run of the soak (envoy/soak.py; the 5-minute run is scripts/bench.sh's): real Envoy
under wrk while its live source cycles through every misbehaviour once: every response 2xx,
and the filter took the good configs and refused or survived the rest."""

import soak


def test_a_short_soak_serves_every_request_while_the_source_misbehaves():
    result = soak.main(14, quiet=True)
    assert result["requests"] > 1000, result
    assert result["non_2xx"] == 0 and result["socket_errors"] == "none", result
    # Every kind of step happened at least once.
    assert all(n >= 1 for n in result["source_steps"].values()), result["source_steps"]
    final = result["samples"][-1]
    # Valid configs were taken; the invalid one and the garbage refused; 503, slow and down
    # counted as failed fetches.
    assert final["rollout_config_updates_total"] >= 4, final
    assert final["rollout_config_rejected_total"] >= 2, final
    assert final["rollout_config_fetch_failures_total"] >= 2, final

"""The access log every shipped envoy.yaml writes (a JSON line per request on Envoy's stdout):
its fields are the ones docs/config.md documents, and in a real Envoy on the static scenario
each line carries the version, rollout, flags and reason the filter decided for that request,
never a client's spoofed copy."""

import datetime
import json
import re

import pytest

from harness import (
    PROBE_WASM,
    ROOT,
    STATIC_CONFIG,
    Client,
    connection_managers,
    free_port,
    load,
    plugin_configuration,
    set_plugin_configuration,
    wait_until,
)

SHIPPED = sorted((ROOT / "envoy").glob("*/envoy.yaml"))
STDOUT_TYPE = "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"
# Values a client sends for the contract's headers; none of them is one the filter would set
# for the static config except x-rollout-version: v2, which most users (90% on v1) do not get.
SPOOFED = [("x-rollout-version", "v2"), ("x-rollout", "spoofed"), ("x-rollout-flags", "new-cart=spoofed"),
           ("x-rollout-reason", "guard")]


def documented_fields():
    """{field: Envoy command} from the table between the access-log markers of docs/config.md."""
    text = (ROOT / "docs/config.md").read_text()
    block = re.search(r"<!-- access-log:begin -->(.*?)<!-- access-log:end -->", text, re.S)
    assert block, "docs/config.md has no access-log table"
    return dict(re.findall(r"^\| `(\w+)` \| `(%[^`]+%)` \|", block.group(1), re.M))


def json_format(doc):
    """The json_format of the one stdout access log on the config's one HTTP connection manager."""
    [hcm] = connection_managers(doc)
    [log] = hcm.get("access_log", [])
    assert log["typed_config"]["@type"] == STDOUT_TYPE
    return log["typed_config"]["log_format"]["json_format"]


def access_lines(envoy):
    """Every access-log line Envoy wrote so far, parsed. Envoy's own log lines (on stderr, in the
    same file) start with `[`; a finished line that starts with `{` must be one whole JSON object.
    The last line is left out until its newline is written: Envoy may be writing it as we read."""
    text = envoy.log_text()
    finished = text[: text.rfind("\n") + 1]
    return [json.loads(line) for line in finished.splitlines() if line.startswith("{")]


def logged(envoy, count):
    """The first `count` access-log lines, once Envoy has flushed them (it writes stdout in batches)."""
    wait_until(lambda: len(access_lines(envoy)) >= count, what=f"{count} access-log lines")
    return access_lines(envoy)[:count]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.parent.name)
def test_every_shipped_config_logs_the_documented_fields(path):
    assert SHIPPED, "no shipped envoy.yaml found"
    documented = documented_fields()
    assert len(documented) >= 11, documented
    assert json_format(load(path)) == documented


def test_the_fields_check_catches_a_difference():
    doc = load(STATIC_CONFIG)
    json_format(doc)["version"] = "%RESP(x-rollout-version)%"
    assert json_format(doc) != documented_fields()


def test_each_request_logs_the_decided_version_and_flags_not_the_clients(start_envoy):
    envoy = start_envoy(STATIC_CONFIG)
    client = Client(envoy.port)
    sent = []
    for i in range(200):
        status, headers, body = client.send(
            [(":method", "GET"), (":path", f"/cart/{i}?email=user{i}@example.com"), (":authority", "a"),
             ("x-user-id", f"user-{i}"), *SPOOFED])
        echoed = json.loads(body)
        sent.append((status, dict(headers), echoed["upstream"], dict(echoed["headers"])))
    client.close()

    by_path = {}
    for line in logged(envoy, len(sent)):
        assert line["path"] not in by_path, f"two lines for {line['path']}"
        by_path[line["path"]] = line
    for i, (status, headers, upstream, upstream_headers) in enumerate(sent):
        line = by_path.get(f"/cart/{i}")
        assert line is not None, f"no line without the query for request {i}: {sorted(by_path)[:3]}"
        assert status == 200
        assert line["status"] == 200 and line["method"] == "GET" and line["resp_flags"] == "-", line
        assert isinstance(line["duration_ms"], int) and line["duration_ms"] >= 0, line
        assert datetime.datetime.fromisoformat(line["time"]).tzinfo is not None, line
        # The version the response says, the one the upstream got and the cluster that answered.
        assert line["version"] == headers["x-rollout-version"] == upstream_headers["x-rollout-version"] == upstream
        assert line["cluster"] == f"checkout-{upstream}"
        assert line["rollout"] == "checkout" == upstream_headers["x-rollout"]
        assert line["flags"] == upstream_headers["x-rollout-flags"]
        assert line["flags"] in ("new-cart=on", "new-cart=off"), line
        assert line["reason"] is None and "x-rollout-reason" not in upstream_headers, line
    # Both versions and both flag values occur (v2 is 10% and new-cart 25% of 200 users), so the
    # checks above compared real decisions, not one constant.
    assert {line["version"] for line in by_path.values()} == {"v1", "v2"}
    assert {line["flags"] for line in by_path.values()} == {"new-cart=on", "new-cart=off"}


def test_a_user_moved_to_stable_logs_the_reason(start_envoy):
    doc = load(STATIC_CONFIG)
    config = plugin_configuration(doc)
    config["rollouts"]["checkout"]["aborted"] = True
    envoy = start_envoy(set_plugin_configuration(doc, json.dumps(config)))
    client = Client(envoy.port)
    replies = [client.send([(":path", f"/r/{i}"), (":authority", "a"), ("x-user-id", f"user-{i}"), *SPOOFED])
               for i in range(20)]
    client.close()
    for (status, headers, _), line in zip(replies, logged(envoy, len(replies)), strict=True):
        assert status == 200 and dict(headers)["x-rollout-reason"] == "aborted"
        assert (line["version"], line["reason"], line["cluster"]) == ("v1", "aborted", "checkout-v1"), line


def test_a_version_that_cannot_be_reached_logs_its_version_and_the_response_flag(start_envoy):
    doc = load(STATIC_CONFIG)
    config = plugin_configuration(doc)
    config["rollouts"]["checkout"]["versions"] = [{"name": "v1", "weight": 0}, {"name": "v2", "weight": 1}]
    # Nothing listens on v2's port.
    envoy = start_envoy(set_plugin_configuration(doc, json.dumps(config)), ports={8082: free_port()})
    client = Client(envoy.port)
    status, headers, _ = client.send([(":path", "/"), (":authority", "a"), ("x-user-id", "user-1"), *SPOOFED[1:]])
    client.close()
    [line] = logged(envoy, 1)
    assert status == 503 and dict(headers)["x-rollout-version"] == "v2"
    assert (line["status"], line["version"], line["cluster"]) == (503, "v2", "checkout-v2"), line
    assert "UF" in line["resp_flags"].split(","), line


def test_a_request_the_filter_skipped_logs_no_version_even_when_the_client_sent_one(start_envoy):
    # The probe filter configured `die` traps on every request: FAIL_OPEN then skips it, and
    # only the early header mutation stands between the client's copies and the log.
    envoy = start_envoy(set_plugin_configuration(load(STATIC_CONFIG), "die", wasm=PROBE_WASM))
    client = Client(envoy.port)
    statuses = [client.send([(":path", f"/d/{i}"), (":authority", "a"), ("x-user-id", f"user-{i}"), *SPOOFED])[0]
                for i in range(10)]
    client.close()
    lines = logged(envoy, len(statuses))
    assert "dying on purpose" in envoy.log_text(), "the filter's VM never died"
    answered = [line for status, line in zip(statuses, lines, strict=True) if status == 200]
    assert len(answered) >= 8, statuses
    for line in answered:
        assert line["cluster"] == "checkout-v1", line
        assert (line["version"], line["rollout"], line["flags"], line["reason"]) == (None, None, None, None), line

"""docs/rollout.schema.json checked with a real validator (jsonschema, Draft 2020-12): every
example and golden-vector config validates, and every error line of
testdata/invalid-configs.json is caught by the schema too (an error of the schema at the same
path, or at its parent naming the field), except those listed in NOT_EXPRESSIBLE with the
reason a schema cannot say it. The list is kept honest both ways: a listed line the schema
starts to catch, or one no longer in the file, fails the test.

The field names per object are checked against the core itself by
core/tests/schema_fields.rs (it asks the core's validator for each object's allowed fields)."""

import json
import pathlib
import re

import jsonschema
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCHEMA_PATH = ROOT / "docs" / "rollout.schema.json"
INVALID = ROOT / "testdata" / "invalid-configs.json"

# (entry description, the core's error path) -> why no JSON Schema can refuse it.
CROSS_FIELD = "a reference to another field's value (a schema cannot compare two values)"
UNIQUE_NAME = "a name repeated in a list of objects (uniqueItems compares whole items, not one field)"
NOT_EXPRESSIBLE = {
    ("not JSON at all", "(root)"): "not JSON: refused by the JSON parser before any schema applies",
    ("trailing garbage after the document", "(root)"): "not JSON: refused by the JSON parser",
    ("duplicate version names", "rollouts.checkout.versions[1].name"): UNIQUE_NAME,
    ("stable names an unknown version", "rollouts.checkout.stable"): CROSS_FIELD,
    ("two rollouts claim the same requests", "rollouts.b.match"): "overlap between two rollouts' matches",
    ("two rollouts share a host and prefix", "rollouts.b.match"): "overlap between two rollouts' matches",
    ("header names clash or are invalid", "headers.rollout"): "the same name in two different fields",
    (
        "flag percentage with 5 decimals",
        "flags.f.percentage",
    ): "multipleOf 0.0001 divides in binary floating point: jsonschema refuses 0.3 and 12.3456 with it",
    ("variants all zero and a duplicate", "flags.f.variants[1].name"): UNIQUE_NAME,
    ("rule serves an unknown variant", "flags.f.rules[0].serve"): CROSS_FIELD,
    (
        "a scheduled rollout with weights, three versions and a step that goes down",
        "rollouts.r.schedule.steps[1].percent",
    ): "each step compared with the one before",
    (
        "schedule: bad time, bad duration, a middle step without hold, two forms",
        "rollouts.r.schedule.steps[1].hold",
    ): "only the last step may leave out hold (a schema cannot single out the last item)",
    (
        "schedule: the new version is the stable one, an unknown one, no steps",
        "rollouts.r.schedule.version",
    ): CROSS_FIELD,
    (
        "schedule: the new version is the stable one, an unknown one, no steps",
        "rollouts.s.schedule.version",
    ): CROSS_FIELD,
    (
        "rollout targeting: an allow list and a rule that name unknown versions, a key listed for two versions, "
        "an empty rule",
        "rollouts.checkout.allow.v2[0]",
    ): "a key repeated across two versions' lists",
    (
        "rollout targeting: an allow list and a rule that name unknown versions, a key listed for two versions, "
        "an empty rule",
        "rollouts.checkout.allow.v9",
    ): CROSS_FIELD,
    (
        "rollout targeting: an allow list and a rule that name unknown versions, a key listed for two versions, "
        "an empty rule",
        "rollouts.checkout.rules[0].serve",
    ): CROSS_FIELD,
    (
        "assign: the cookie must be a user_key source; max_age a duration",
        "assign.cookie",
    ): "a reference to user_key",
    (
        "lifecycle: expires not a date, an owner not a string, a rollout that expires before it was created",
        "rollouts.checkout.expires",
    ): "two times compared",
}

# A path's last part: `.name`, `[index]`, or a top-level field (no dot before it).
LAST = re.compile(r"^(.*?)(?:\.|^)([^.\[]+)$|^(.*)\[(\d+)\]$")


@pytest.fixture(scope="module")
def validator():
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


def core_path(parts):
    """A validator error's location written as the core writes paths (`a.b[0].c`)."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out or "(root)"


def flatten(errors):
    """Every error with those inside anyOf/oneOf (their `context`)."""
    for error in errors:
        yield error
        yield from flatten(error.context or [])


def catches(schema_errors, path):
    """Whether some schema error is about `path`: at it, or at its parent naming its last
    part (an unknown field, a missing one, a bad property name)."""
    split = LAST.match(path)
    parent, last = (split.group(1), split.group(2)) if split and split.group(2) else (None, None)
    for error in schema_errors:
        at = core_path(error.absolute_path)
        if at == path:
            return True
        names_field = error.validator in ("additionalProperties", "required") or (
            "propertyNames" in error.absolute_schema_path
        )
        if names_field and last is not None and at == (parent or "(root)") and f"'{last}'" in error.message:
            return True
        # A repeated item: the validator names the list, the core the repeat.
        if split and split.group(4) is not None and error.validator == "uniqueItems" and at == split.group(3):
            return True
    return False


def configs(pattern):
    return sorted(ROOT.glob(pattern))


def test_the_schema_covers_the_examples_and_vectors(validator):
    files = configs("examples/*.json") + configs("testdata/vectors/*.json")
    assert len(files) >= 10, files
    for file in files:
        doc = json.loads(file.read_text())
        config = doc["config"] if file.parent.name == "vectors" else doc
        errors = [f"{core_path(e.absolute_path)}: {e.message}" for e in validator.iter_errors(config)]
        assert errors == [], file.relative_to(ROOT)


def test_a_schema_key_in_a_config_is_allowed(validator):
    config = json.loads((ROOT / "examples" / "checkout.json").read_text())
    config["$schema"] = "./docs/rollout.schema.json"
    assert list(validator.iter_errors(config)) == []


def test_every_invalid_config_is_refused_by_the_schema_or_listed(validator):
    entries = json.loads(INVALID.read_text())
    assert len(entries) >= 40
    seen = set()
    uncaught, caught_but_listed = [], []
    for entry in entries:
        config = entry["config"]
        if isinstance(config, str):
            try:
                config = json.loads(config)
            except json.JSONDecodeError:
                config = None
        schema_errors = [] if config is None else list(flatten(validator.iter_errors(config)))
        for line in entry["errors"]:
            path = line.split(": ", 1)[0]
            key = (entry["description"], path)
            seen.add(key)
            caught = config is not None and catches(schema_errors, path)
            if key in NOT_EXPRESSIBLE and caught:
                caught_but_listed.append(key)
            elif key not in NOT_EXPRESSIBLE and not caught:
                found = [f"{core_path(e.absolute_path)}: {e.message}" for e in schema_errors]
                uncaught.append((line, found))
    assert uncaught == [], "core errors the schema does not catch:\n" + "\n".join(map(str, uncaught))
    assert caught_but_listed == [], "listed as not expressible, but the schema catches them now"
    stale = sorted(set(NOT_EXPRESSIBLE) - seen)
    assert stale == [], "listed, but no longer an error line of testdata/invalid-configs.json"


def test_each_structural_entry_is_refused_whole(validator):
    """The per-line check above, seen per entry: an entry with at least one line the schema
    can express is refused by it."""
    for entry in json.loads(INVALID.read_text()):
        lines = [line.split(": ", 1)[0] for line in entry["errors"]]
        if all((entry["description"], p) in NOT_EXPRESSIBLE for p in lines):
            continue
        assert not validator.is_valid(entry["config"]), entry["description"]


def test_the_operators_are_the_cores(validator):
    """The schema's operator list is the core's, in the core's order (from the
    unknown-operator error line, which the core builds from its operator table)."""
    entries = json.loads(INVALID.read_text())
    line = next(e for entry in entries for e in entry["errors"] if "unknown operator" in e)
    core_ops = line.split("expected one of: ", 1)[1].split(", ")
    schema = json.loads(SCHEMA_PATH.read_text())
    assert schema["$defs"]["condition"]["properties"]["op"]["enum"] == core_ops

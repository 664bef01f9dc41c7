"""Docs checked against the repository: every path README.md and ARCHITECTURE.md name (in
backticks or as a link) exists, every link in the envoy/ READMEs resolves, and claims that
are easy to get stale (the wasm opt-level, which hosts exist) agree with the code; the
`stats_tags` block docs/config.md tells users to copy is the one every shipped envoy.yaml
has, and the README's Envoy snippet shows where `failure_policy` goes.

A path in backticks counts when its first part is an entry at the repository root
(`envoy/static/envoy.yaml`), or when it names a file inside the section of ARCHITECTURE.md
headed by a folder (`config.rs` under "### `core/`"). Build outputs (target/, .venv, a
.wasm) are not in a clone and are skipped."""

import pathlib
import re
import tomllib

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
TOP_LEVEL = {p.name for p in ROOT.iterdir() if p.name != ".git"}
DOCS = ["README.md", "ARCHITECTURE.md"]
FILE_SUFFIXES = (".rs", ".py", ".sh", ".md", ".toml", ".json", ".yaml", ".mjs", ".lock")
# Made by a build or an install, never in a clone.
BUILT = ("target/", ".venv", "worker/build/", "worker/node_modules/")

FENCE = re.compile(r"^```.*?^```", re.S | re.M)
BACKTICKS = re.compile(r"`([^`\s]+)`")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{2,4} .*$", re.M)
FOLDER_HEADING = re.compile(r"^#{2,4} `([\w.-]+/)`", re.M)


def prose(text):
    """The text outside fenced code blocks (commands and configs there are not claims of
    paths in this repository)."""
    return FENCE.sub("", text)


def sections(text):
    """(folder named by the section's heading or None, section text) for each section."""
    starts = [m.start() for m in HEADING.finditer(text)]
    bounds = zip([0, *starts], [*starts, len(text)], strict=True)
    out = []
    for start, end in bounds:
        body = text[start:end]
        folder = FOLDER_HEADING.match(body)
        out.append((folder.group(1) if folder else None, body))
    return out


def exists(path, base=ROOT):
    """Whether a path (glob patterns allowed) names something under `base`."""
    path = path.rstrip("/") or "."
    if any(c in path for c in "*?["):
        return any(base.glob(path))
    return (base / path).exists()


def named_paths(text):
    """(path, folder of its section) for every backticked token that looks like a repository
    path: its first part is a root entry, or it is a file name with a known suffix."""
    out = []
    for folder, body in sections(prose(text)):
        for token in BACKTICKS.findall(body):
            token = token.split("#")[0].rstrip(".,:;")
            if not re.fullmatch(r"[\w.*-]+(/[\w.*-]+)*/?", token) or token.startswith(BUILT) or token.endswith(".wasm"):
                continue
            if token.split("/")[0] in TOP_LEVEL or token.endswith(FILE_SUFFIXES):
                out.append((token, folder))
    return out


def missing_paths(text):
    """Named paths that do not exist: at the root, or (for a section headed by a folder)
    anywhere under that folder."""
    missing = []
    for path, folder in named_paths(text):
        if exists(path):
            continue
        if folder and (exists(path, ROOT / folder) or any((ROOT / folder).glob(f"**/{path.rstrip('/')}"))):
            continue
        missing.append(path)
    return missing


def broken_links(doc):
    """Relative links of a markdown file that do not resolve from its folder."""
    broken = []
    for target in LINK.findall(prose(doc.read_text())):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue
        path = target.split("#")[0]
        if not (doc.parent / path).exists():
            broken.append(target)
    return broken


@pytest.mark.parametrize("name", DOCS)
def test_every_path_the_doc_names_exists(name):
    text = (ROOT / name).read_text()
    assert len(named_paths(text)) >= 10, "the path finder found almost nothing: is it still working?"
    assert missing_paths(text) == []


@pytest.mark.parametrize("doc", [ROOT / n for n in DOCS] + sorted((ROOT / "envoy").glob("**/README.md")),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_resolves(doc):
    assert broken_links(doc) == []


def test_the_checks_catch_a_made_up_path_and_link(tmp_path):
    text = "See `envoy/static/nonexistent.yaml`, `core/` and [x](envoy/nope/).\n\n### `core/`\n\n- `gone.rs`: no.\n"
    assert missing_paths(text) == ["envoy/static/nonexistent.yaml", "gone.rs"]
    doc = tmp_path / "README.md"
    doc.write_text(text)
    assert broken_links(doc) == ["envoy/nope/"]


def test_the_wasm_opt_level_the_docs_state_is_the_one_cargo_uses():
    config = tomllib.loads((ROOT / ".cargo/config.toml").read_text())
    levels = {target: re.search(r"opt-level=(\w+)", " ".join(config["target"][target]["rustflags"])).group(1)
              for target in ("wasm32-wasip1", "wasm32-unknown-unknown")}
    assert set(levels.values()) == {"z"}, levels
    architecture = (ROOT / "ARCHITECTURE.md").read_text()
    assert "wasm targets build at opt-level z" in " ".join(architecture.split())
    # The wasm modules have a profile of their own; native builds keep the plain release one.
    profiles = tomllib.loads((ROOT / "Cargo.toml").read_text())["profile"]
    assert profiles["wasm"]["lto"] is True and "lto" not in profiles.get("release", {}), profiles
    assert "`[profile.wasm]`" in architecture
    for name in DOCS:
        text = (ROOT / name).read_text()
        assert "cargo build --release -p rollout-filter" not in text, name


def test_the_docs_name_every_host_as_existing():
    architecture = " ".join((ROOT / "ARCHITECTURE.md").read_text().split())
    assert (ROOT / "worker/src/lib.rs").exists()
    assert "later the Cloudflare Worker" not in architecture


def marked_block(text, marker):
    """The fenced block between `<!-- MARKER:begin -->` and `<!-- MARKER:end -->`, without its
    fences."""
    m = re.search(rf"<!-- {marker}:begin -->\s*```\w*\n(.*?)```\s*<!-- {marker}:end -->", text, re.S)
    assert m, f"no {marker} block"
    return m.group(1)


SHIPPED_BOOTSTRAPS = sorted(p for p in (ROOT / "envoy").glob("*/envoy.yaml")
                            if "stats_config" in yaml.safe_load(p.read_text()))


def test_every_shipped_bootstrap_has_the_stats_tags():
    names = {p.parent.name for p in SHIPPED_BOOTSTRAPS}
    assert {"static", "live", "ecds"} <= names, names


@pytest.mark.parametrize("bootstrap", SHIPPED_BOOTSTRAPS, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_documented_stats_tags_are_the_shipped_ones(bootstrap):
    documented = yaml.safe_load(marked_block((ROOT / "docs/config.md").read_text(), "stats_tags"))
    assert list(documented) == ["stats_config"], "the block to copy is the whole stats_config"
    assert documented["stats_config"] == yaml.safe_load(bootstrap.read_text())["stats_config"]


def test_the_stats_tags_check_catches_a_difference():
    documented = yaml.safe_load(marked_block((ROOT / "docs/config.md").read_text(), "stats_tags"))
    changed = yaml.safe_load(SHIPPED_BOOTSTRAPS[0].read_text())["stats_config"]
    changed["stats_tags"][0]["regex"] = changed["stats_tags"][0]["regex"].replace("\\.", ".")
    assert documented["stats_config"] != changed


def test_the_readme_envoy_snippet_shows_where_failure_policy_goes():
    readme = (ROOT / "README.md").read_text()
    snippets = [yaml.safe_load(b) for b in re.findall(r"^```yaml\n(.*?)^```", readme, re.S | re.M)]
    wasm = [f["typed_config"]["config"] for s in snippets if isinstance(s, dict) and "http_filters" in s
            for f in s["http_filters"] if f["name"] == "envoy.filters.http.wasm"]
    assert len(wasm) == 1, wasm
    assert wasm[0]["failure_policy"] == "FAIL_OPEN"

"""The ``cytoscreen`` command line: help, exit codes, error lines, the import graph, and the one
config-override mechanism of :mod:`cytoscreen.argparse_`."""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cytoscreen import argparse_, cli
from cytoscreen.errors import InputDataError

PACKAGE = Path(cli.__file__).resolve().parent


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _all_parsers() -> list[tuple[list[str], argparse.ArgumentParser]]:
    """Every (sub-)command's argv prefix and parser, nested actions included."""
    out = []
    todo = [([name], p) for name, p in _subparsers(cli.build_parser()).items()]
    while todo:
        words, parser = todo.pop(0)
        out.append((words, parser))
        todo += [([*words, name], p) for name, p in _subparsers(parser).items()]
    return out


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for names, _module in cli._available_commands():
        for name in names:
            assert f"    {name} " in text


def test_command_table_modules_exist_and_register_their_names():
    listed = [name for names, _ in cli.COMMANDS for name in names]
    assert len(listed) == len(set(listed))
    available = cli._available_commands()
    core = {"synth", "ingest", "qc", "features", "segment", "profiles", "novelty", "moa", "evaluate",
            "report", "backbones"}
    assert core <= {n for names, _ in available for n in names}
    for names, module in available:
        assert module.endswith(".command"), module  # one command.py per stage package
        for name in names:  # building only that command's module registers the name
            assert name in _subparsers(cli.build_parser(name))


@pytest.mark.parametrize("words", [w for w, _ in _all_parsers()], ids=" ".join)
def test_every_help_exits_0_and_shows_defaults(words, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main([*words, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: cytoscreen " + " ".join(words))
    parser = dict((tuple(w), p) for w, p in _all_parsers())[tuple(words)]
    assert issubclass(parser.formatter_class, argparse.ArgumentDefaultsHelpFormatter)
    has_default = any(
        a.option_strings and a.help and a.default not in (None, argparse.SUPPRESS)
        and not isinstance(a, argparse._HelpAction) for a in parser._actions
    )
    if has_default:
        assert "(default: " in text


def test_unknown_command_exits_2(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["no-such-command"])
    assert exit_.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_project_error_is_one_error_line_with_its_exit_code(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("CYTOSCREEN_DEBUG", raising=False)
    missing = tmp_path / "missing.parquet"
    rc = cli.main(["profiles", "normalize", str(missing), str(tmp_path / "out.parquet")])
    err = capsys.readouterr().err
    assert rc == InputDataError.exit_code != 0
    lines = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(lines) == 1 and str(missing) in lines[0] and "file not found" in lines[0]
    assert "Traceback" not in err


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


def test_no_module_imports_the_cli():
    offenders = [
        str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
        if p.name != "cli.py" and any(n == "cytoscreen.cli" or n.startswith("cytoscreen.cli.")
                                      for n in _imports(p))
    ]
    assert offenders == []


def test_commands_use_the_argparse_layer():
    for _names, module in cli._available_commands():
        path = PACKAGE.parent / (module.replace(".", "/") + ".py")
        assert "cytoscreen.argparse_" in {n.rsplit(".", 1)[0] if n.startswith("cytoscreen.argparse_.")
                                          else n for n in _imports(path)}, path


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys\nprint(' '.join(sorted(sys.modules)))"],
        capture_output=True, text=True, check=True, cwd=PACKAGE.parent,
    )
    return set(out.stdout.split())


def test_importing_the_cli_loads_no_torch():
    mods = _modules_after("import cytoscreen.cli")
    assert "torch" not in mods and "pandas" not in mods


HEAVY = ("torch", "sklearn", "umap", "pytorch_lightning", "scipy.optimize", "matplotlib")


def test_profiles_parser_loads_no_heavy_module():
    mods = _modules_after("from cytoscreen.cli import build_parser\nbuild_parser('profiles')")
    for heavy in HEAVY:
        assert heavy not in mods, heavy


#: Nor do the profiles steps load image readers, numba, scipy's linear algebra or jsonschema (a
#: config the schema accepts is checked without it): each is start-up time the step does not use.
STEP_HEAVY = (*HEAVY, "tifffile", "numba", "scipy.linalg", "jsonschema", "PIL", "zarr")


@pytest.mark.parametrize("step", ["aggregate", "normalize", "select", "consensus"])
def test_profiles_steps_load_no_heavy_module(step, tmp_path):
    from cytoscreen import io
    from tests.fixtures.profiles import synthetic_wells

    src, out = tmp_path / "in.parquet", tmp_path / "out.parquet"
    io.write_parquet(synthetic_wells(plates=2), src)
    mods = _modules_after(
        "from cytoscreen.cli import main\n"
        f"assert main(['-q', 'profiles', {step!r}, {str(src)!r}, {str(out)!r}]) == 0"
    )
    assert out.exists()
    for heavy in STEP_HEAVY:
        assert heavy not in mods, heavy


# --- the one override mechanism ----------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    schema = {
        "n": {"type": "integer", "default": 3},
        "method": {"enum": ["a", "b"], "default": "a"},
        "flag": {"type": "boolean", "default": True},
        "whiten": {"enum": [None, "ZCA"], "default": None},
    }
    p = argparse.ArgumentParser(formatter_class=argparse_.HelpFormatter)
    argparse_.add_override(p, "--n", "n", "a number", schema=schema, section="s", type=int)
    argparse_.add_override(p, "--method", "method", "a method", schema=schema)
    argparse_.add_override(p, "--flag", "flag", "a switch", schema=schema, type=bool)
    argparse_.add_override(p, "--whiten", "whiten", "whitening", schema=schema,
                           choices=("ZCA", "none"), null="none")
    return p


def test_override_records_only_given_flags():
    p = _parser()
    ns = p.parse_args([])
    assert (ns.n, ns.method, ns.flag, ns.whiten) == (3, "a", True, None)  # schema defaults shown
    assert argparse_.given_overrides(ns) == {}
    ns = p.parse_args(["--n", "5", "--no-flag", "--whiten", "none"])
    assert argparse_.given_overrides(ns) == {"n": 5, "flag": False, "whiten": None}
    assert p.parse_args(["--whiten", "ZCA"]).whiten == "ZCA"
    with pytest.raises(SystemExit):
        p.parse_args(["--method", "c"])  # schema enum -> choices
    text = p.format_help()
    assert "(config: s.n)" in text and "(default: 3)" in text and "{a,b}" in text


def test_flag_beats_config_beats_schema_default(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"profiles": {"corr_threshold": 0.8, "exclude_qc_failed": False}}))
    parser = cli.build_parser("profiles")
    ns = parser.parse_args(["profiles", "select", "a.parquet", "b.parquet", "--config", str(cfg),
                            "--na-cutoff", "0.1"])
    section = argparse_.load_config_with_overrides(ns, "profiles")["profiles"]
    defaults = argparse_.section_defaults("profiles")
    assert section["na_cutoff"] == 0.1  # flag
    assert section["corr_threshold"] == 0.8 and defaults["corr_threshold"] != 0.8  # config
    assert section["freq_cut"] == defaults["freq_cut"]  # schema default
    ns = parser.parse_args(["profiles", "aggregate", "a.parquet", "b.parquet", "--config", str(cfg),
                            "--exclude-qc-failed"])
    assert argparse_.load_config_with_overrides(ns, "profiles")["profiles"]["exclude_qc_failed"] is True
    ns = parser.parse_args(["profiles", "aggregate", "a.parquet", "b.parquet", "--config", str(cfg)])
    assert argparse_.load_config_with_overrides(ns, "profiles")["profiles"]["exclude_qc_failed"] is False


def test_profiles_cli_defaults_equal_schema_defaults():
    defaults = argparse_.section_defaults("profiles")
    for words, parser in _all_parsers():
        if words[0] != "profiles" or len(words) < 2:
            continue
        for action in parser._actions:
            if isinstance(action, (argparse_.ConfigOverride, argparse_.ConfigOverrideBool)):
                assert action.default == defaults[action.dest], (words, action.dest)


def test_main_leaves_the_collector_as_it_found_it(tmp_path):
    import gc

    assert gc.isenabled() and gc.get_freeze_count() == 0
    rc = cli.main(["-q", "profiles", "select", str(tmp_path / "missing.parquet"),
                   str(tmp_path / "out.parquet")])
    assert rc != 0  # the step ran (and failed on the missing input) after the start-up
    assert gc.isenabled() and gc.get_freeze_count() == 0
    with pytest.raises(SystemExit):
        cli.main(["profiles", "select", "--no-such-flag"])
    assert gc.isenabled() and gc.get_freeze_count() == 0

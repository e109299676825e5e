"""Optional parts stay optional: a feature whose extra is missing is one line naming the extra, exit 2, before work.

A module is made unimportable the way Python itself records a failed import (``sys.modules[name] = None``), in a
fresh interpreter, so the command runs its real path; the wheel smoke (scripts/wheel_smoke.sh) checks the same
refusal in a virtualenv that holds only the base wheel.
"""

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from lmtune.errors import InputError
from lmtune.extras import EXTRAS, require

ROOT = Path(__file__).resolve().parents[1]


def run_without(modules: list[str], *args: str, cwd: Path) -> subprocess.CompletedProcess:
    code = ("import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in modules)
            + f"sys.argv = ['lmtune', *{list(args)!r}]\nfrom lmtune.cli import main\nmain()\n")
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)})


def test_every_extra_of_pyproject_is_known_to_the_check_and_the_base_is_half_of_what_it_was():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert set(EXTRAS) == set(project["optional-dependencies"]) - {"dev"}
    assert len(project["dependencies"]) <= 14  # 27 before issue 30


def test_require_names_the_feature_and_the_extra():
    require("serve", "serve", ("json",))  # importable: nothing happens
    with pytest.raises(InputError) as error:
        require("serve", "serve", ("json", "no_such_module_here"))
    assert error.value.field == "serve"
    assert error.value.message == "pip install 'lmtune[serve]' (no_such_module_here not installed)"


@pytest.mark.parametrize(("missing", "args", "line"), [
    (["starlette"], ["serve", "--port", "1"], "error: serve: pip install 'lmtune[serve]' (starlette not installed)"),
    (["PyNomad"], ["bench", "samplers", "--table", "x.json", "--samplers", "nomad"],
     "error: samplers: pip install 'lmtune[bench]' (PyNomad not installed)"),
    (["matplotlib"], ["select", "--curves", "c.csv"], "error: select: pip install 'lmtune[select]'"),
    (["optuna_integration"], ["lora", "--sampler", "botorch", "--trials", "1", "--max-length", "8"],
     "error: sampler: pip install 'lmtune[botorch]'"),
])
def test_a_command_whose_extra_is_missing_says_which_to_install_and_exits_2_before_work(tmp_path, missing, args,
                                                                                         line):
    run = run_without(missing, *args, cwd=tmp_path)
    assert run.returncode == 2, run.stderr
    assert run.stderr.startswith(line), run.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written: no storage, no output


def test_a_module_already_imported_is_present_whatever_its_spec():
    """optuna-integration swaps its module for a lazy one with ``__spec__`` None; ``find_spec`` then raises."""
    import optuna_integration  # noqa: F401  (imported: the lazy module is what sys.modules holds)

    from lmtune.extras import missing

    assert missing(["optuna_integration", "no_such_module_here"]) == ["no_such_module_here"]
    from optuna_integration import BoTorchSampler  # noqa: F401  (the lazy module resolved: still present)

    assert missing(["optuna_integration"]) == []

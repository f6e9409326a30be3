"""The pytest plugin as a user meets it: a project of their own (medport.toml, bots/ from `medport
init` + `medport generate`, the README's example test), run by pytest in a subprocess (pytester), the
plugin loaded from its `pytest11` entry point."""

import pytest
from click.testing import CliRunner

from medport.generator.cli.main import main
from tests.paths import readme_block

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.slow


def user_project(pytester, config_dir="."):
    root = pytester.path / config_dir
    assert CliRunner().invoke(main, ["init", str(root)]).exit_code == 0
    r = CliRunner().invoke(main, ["generate", "-c", str(root / "medport.toml"), "-o", str(root / "bots")])
    assert r.exit_code == 0, r.output
    return root


def test_the_readme_example_passes_in_a_user_project(pytester):
    user_project(pytester)
    pytester.mkdir("tests")
    (pytester.path / "tests" / "test_medport_flow.py").write_text(readme_block("example-test"))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=240)
    result.assert_outcomes(passed=3)


def test_ini_options_scope_and_config_path(pytester):
    user_project(pytester, "integration")
    pytester.makeini("[pytest]\nmedport_config = integration/medport.toml\nmedport_scope = function\n")
    pytester.makepyfile(
        test_scope="""
        seen = []

        def test_one(medport_stack, medport_emulator):
            seen.append(medport_stack.base_url)
            assert medport_stack.bot_ids.keys() == {"patient_bot", "webhook_bot", "contribution"}
            assert medport_emulator.fhir.search("Bot") == []          # the emulator alone has no bots
            assert medport_emulator.health()["ready"] is True

        def test_two(medport_stack):
            seen.append(medport_stack.base_url)
            assert len(set(seen)) == 2                                # function scope: a fresh stack
            org = medport_stack.create_facility()
            assert medport_stack.fhir.read("Organization", org["id"])["name"]
    """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=240)
    result.assert_outcomes(passed=2)


def test_missing_runtime_and_config_are_one_line(pytester, tmp_path, monkeypatch):
    pytester.makepyfile(
        test_x="""
        def test_stack(medport_stack):
            pass
    """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=120)
    result.assert_outcomes(errors=1)
    assert "medport: " in result.stdout.str() and "medport.toml not found" in result.stdout.str()
    user_project(pytester)
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("MEDPORT_NODE_MODULES", str(empty))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=120)
    result.assert_outcomes(errors=1)
    out = result.stdout.str()
    assert f"medport: MEDPORT_NODE_MODULES={empty} lacks @medplum/core" in out
    assert "Traceback" not in out and "During handling" not in out


def test_the_plugin_can_be_disabled(pytester):
    pytester.makepyfile(
        test_x="""
        def test_stack(medport_stack):
            pass
    """
    )
    result = pytester.runpytest_subprocess("-p", "no:medport", "-p", "no:cacheprovider", timeout=120)
    result.assert_outcomes(errors=1)
    assert "fixture 'medport_stack' not found" in result.stdout.str()


def test_the_medplum_release_comes_from_the_command_line_or_the_ini(pytester):
    """`--medplum-version` (or the `medport_medplum_version` ini option) sets the release the fixtures' emulator
    emulates; an unsupported one is one line, no traceback."""
    user_project(pytester)
    pytester.makeini("[pytest]\nmedport_medplum_version = 5.0.12\n")
    pytester.makepyfile(
        test_release="""
        import requests

        def test_release(medport_stack, medport_emulator, request):
            want = request.config.getoption("medport_medplum_version") or "5.0.12"
            for base in (medport_stack.base_url, medport_emulator.base_url):
                assert requests.get(base + "healthcheck", timeout=10).json()["version"].startswith(want + "-")
    """
    )
    pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=240).assert_outcomes(passed=1)
    pytester.runpytest_subprocess("-p", "no:cacheprovider", "--medplum-version", "5.1.26", timeout=240).assert_outcomes(
        passed=1
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--medplum-version", "4.2.0", timeout=120)
    result.assert_outcomes(errors=1)
    out = result.stdout.str()
    assert "medport: Medplum 4.2.0 is older than 5.0.0, the oldest release medport supports" in out
    assert "Traceback" not in out

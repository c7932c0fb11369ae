"""terraform/ offline, the whole tree: with no link cut every check of tests/terraform_checks.py
passes, and the optional features switched off make no instances; and the tools: `terraform fmt`
always, `terraform validate` and checkov where they can run (the google provider cannot be
downloaded here, so validate skips offline).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests import terraform_checks as tc
from tests.tf_fixtures import PENDING_ENTRY_POINTS, ROOT, TF_DIR, all_problems, main_py_functions

# The shared fixtures, imported as themselves so pytest finds them here.
from tests.tf_fixtures import policy as policy
from tests.tf_fixtures import tf as tf

# --- The whole tree ------------------------------------------------------------------------


def test_untouched_tree_passes_every_check(policy, tf):
    # The baseline of the cuts (test_terraform_*.py): with no link cut, no check reports anything.
    problems = all_problems(tf, policy, defined=main_py_functions() | PENDING_ENTRY_POINTS)
    assert {k: v for k, v in problems.items() if v} == {}


def test_optional_features_switch_their_instances_off(tf):
    """The checks expand for_each / dynamic blocks with the optional features on
    (tc.CHECK_VARIABLES); switched off, the same expressions make nothing."""
    on = tc.functions(tf)
    assert {fn for fn, body in on.items() if tc.secret_env_keys(body)} == {"notify"}
    token_creators = {
        i.key
        for i in tc.instances(tf, "google_service_account_iam_member")
        if i.name == "pubsub_agent_token_creator"
    }
    assert token_creators == {"alerts_trigger", "rollback_trigger", "notify_push", "checkpoint_push"}
    off = {
        "chat_webhook_secret_id": "",
        "grant_pubsub_agent_token_creator": False,
    }
    assert all(not tc.secret_env_keys(body) for body in tc.functions(tf, off).values())
    assert [
        i
        for i in tc.instances(tf, "google_service_account_iam_member", off)
        if i.name == "pubsub_agent_token_creator"
    ] == []


# --- Tools: fmt always, validate and checkov where they can run -------------------------------


def test_terraform_fmt(tmp_path):
    terraform = shutil.which("terraform")
    if terraform is None:
        pytest.skip("terraform is not on PATH: install Terraform >= 1.5 to run `terraform fmt -check`")
    result = subprocess.run(
        [terraform, "fmt", "-check", "-recursive", "-diff", str(TF_DIR)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "TF_CLI_CONFIG_FILE": os.devnull, "TF_IN_AUTOMATION": "1"},
    )
    assert result.returncode == 0, (
        f"terraform fmt -check failed ({result.returncode}):\n{result.stdout}{result.stderr}"
    )


def _google_provider_available() -> bool:
    """The provider is present when `terraform init` already ran here, or a plugin cache or
    filesystem mirror holds it. Nothing is downloaded to find out."""
    candidates = [TF_DIR / ".terraform" / "providers" / "registry.terraform.io" / "hashicorp" / "google"]
    if os.environ.get("TF_PLUGIN_CACHE_DIR"):
        candidates.append(
            Path(os.environ["TF_PLUGIN_CACHE_DIR"]) / "registry.terraform.io" / "hashicorp" / "google"
        )
    home = Path.home()
    candidates += [
        home / ".terraform.d" / "plugins" / "registry.terraform.io" / "hashicorp" / "google",
        home / ".terraform.d" / "plugin-cache" / "registry.terraform.io" / "hashicorp" / "google",
    ]
    return any(c.is_dir() and any(c.rglob("terraform-provider-google*")) for c in candidates)


def test_terraform_validate():
    terraform = shutil.which("terraform")
    if terraform is None or not _google_provider_available():
        pytest.skip(
            "google provider not available offline: run terraform init && terraform validate "
            "where the registry is reachable"
        )
    init = subprocess.run(
        [terraform, "init", "-backend=false", "-input=false", "-get=false"],
        cwd=TF_DIR,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert init.returncode == 0, init.stdout + init.stderr
    result = subprocess.run(
        [terraform, "validate", "-no-color"], cwd=TF_DIR, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_checkov_has_no_unskipped_failure():
    """Runs infra/checkov.sh when its virtualenv exists (the script creates it on first use;
    the suite itself never installs anything)."""
    venv_checkov = ROOT / ".venv-checkov" / "bin" / "checkov"
    if not venv_checkov.exists():
        pytest.skip("checkov is not installed: run `bash infra/checkov.sh` (creates .venv-checkov)")
    result = subprocess.run(
        ["bash", str(ROOT / "infra" / "checkov.sh"), "--output", "json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError:
        pytest.fail(
            f"checkov printed no JSON report (exit {result.returncode}):\n{result.stdout}{result.stderr}"
        )
    reports = report if isinstance(report, list) else [report]
    failed = [
        f"{c['check_id']} {c['resource']} ({c['file_path']})"
        for r in reports
        for c in r.get("results", {}).get("failed_checks", [])
    ]
    assert failed == [], (
        "checkov failures (fix them or skip in code with #checkov:skip=ID:reason):\n" + "\n".join(failed)
    )
    assert result.returncode == 0

"""The Debian package a fleet installs offline (issue 18): built by scripts/build-deb, checked
by lintian and by scripts/check-deb, which installs it into a scratch Debian root with no network,
runs the daemon against the packaged Mosquitto, upgrades, removes and purges it."""

from __future__ import annotations

import os
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SETUP_HOST = REPO / "scripts" / "setup-host"


def test_a_fresh_install_starts_from_the_example_with_the_gateways_mqtt_user_on() -> None:
    """Shared by install.sh and the package: the broker refuses anonymous clients."""
    out = subprocess.run(
        [str(SETUP_HOST), "example-config", str(REPO / "examples" / "store.toml")],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    example = tomllib.loads((REPO / "examples" / "store.toml").read_text(encoding="utf-8"))
    config = tomllib.loads(out)
    assert "password_file" not in example["mqtt"]
    assert config["mqtt"]["username"] == "store-gateway"
    assert config["mqtt"]["password_file"] == "/etc/store-gateway/mqtt.password"
    # Nothing else changed.
    del config["mqtt"]["username"], config["mqtt"]["password_file"]
    example["mqtt"].pop("username", None)
    assert config == example


def test_setup_host_refuses_what_it_cannot_do_with_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such.toml"
    failed = subprocess.run(
        [str(SETUP_HOST), "example-config", str(missing)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert failed.returncode != 0
    assert f"{missing} is missing" in failed.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="debootstrap, chroot and namespaces need root")
@pytest.mark.timeout(1800)  # a build (~2 min), lintian (~1 min), a first debootstrap (minutes)
def test_the_package_is_lintian_clean_and_installs_serves_upgrades_and_purges_offline(
    tmp_path: Path,
) -> None:
    for tool in ("lintian", "debootstrap", "dpkg-shlibdeps"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing; scripts/test installs it")
    built = subprocess.run(
        [str(REPO / "scripts" / "build-deb"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    deb = Path(built.stdout.strip().splitlines()[-1])
    assert deb.is_file()
    # Errors fail; the overrides say why each vendored-wheel tag is accepted.
    lint = subprocess.run(
        ["lintian", "--fail-on", "error", "--tag-display-limit", "0", str(deb)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert "E: " not in lint.stdout
    # The scratch root's base is kept between runs (build/ is ignored by git).
    checked = subprocess.run(
        [
            str(REPO / "scripts" / "check-deb"),
            *("--base", str(REPO / "build" / "check-deb-base")),
            str(deb),
        ],
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr[-5000:]
    assert "check-deb: all 10 checks passed" in checked.stderr

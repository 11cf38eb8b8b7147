"""User-facing text that must be true (audit): help texts that state a default or offer an
option, and one-line errors whose advice works."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from faceutils import ASTRONAUT, run_cli


def _help(capsys: pytest.CaptureFixture[str], *command: str) -> str:
    status, out, _ = run_cli(capsys, *command, "--help")
    assert status == 0
    return " ".join(out.split())  # argparse's line wrapping removed


def test_tta_help_says_the_default_is_the_presets(capsys: pytest.CaptureFixture[str]) -> None:
    """--tta's help said "(default: on)", the dataclass default, but --preset fast runs
    without TTA (presets.toml: tta = false)."""
    from agegender.presets import presets

    text = _help(capsys, "predict")
    assert "(default: on)" not in text
    without = [name for name, preset in presets().items() if not preset.tta]
    assert without == ["fast"]
    said = "average each face with its mirror image (default: the preset's: on; off in fast)"
    assert said in text


def test_calibrate_help_does_not_offer_calibration(capsys: pytest.CaptureFixture[str]) -> None:
    """calibrate refuses --calibration (it fits the raw outputs), yet its --help offered it
    as "(default: the preset's)"; the refusal itself stays one line."""
    assert "--calibration" not in _help(capsys, "calibrate")
    status, _, err = run_cli(
        capsys, "calibrate", str(ASTRONAUT), "--format", "utkface", "--calibration", "none"
    )
    assert status == 2
    assert err.strip() == (
        "agegender: error: calibrate fits the raw model outputs: --calibration has no use here"
    )


def test_tta_margin_where_no_gated_card_runs_does_not_advise_tta(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`--preset fast --tta-margin M` said "add --tta", and with --tta added it failed again
    (fast has no gated card): neither error advises it."""
    for extra in ((), ("--tta",)):
        status, _, err = run_cli(
            capsys, "predict", "--jsonl", str(ASTRONAUT), "--preset", "fast", *extra,
            "--tta-margin", "0.3",
        )  # fmt: skip
        assert status == 2
        assert "add --tta" not in err and err.count("\n") == 1
        if extra:
            assert "mirrored behind the gate (this preset's: none)" in err
        else:
            assert "the preset fast runs without it, and gates none of its models" in err


def test_batch_out_folder_the_file_system_refuses_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A DEST whose folder cannot be made after the checks (root writing under /proc) raised
    FileNotFoundError with a traceback."""
    pytest.importorskip("pyarrow", reason="agegender[batch] (pyarrow) is not installed")
    from agegender.batch import dataset
    from agegender.errors import AgegenderError

    def refuse(self: Any) -> None:
        raise FileNotFoundError(2, os.strerror(2), str(tmp_path / "out" / "keys"))

    monkeypatch.setattr(dataset._Files, "mkdirs", refuse)
    manifest = dataset.make_manifest({}, [], "parquet", "stat", {})
    out = tmp_path / "out"
    with pytest.raises(AgegenderError) as raised:
        dataset.Dataset(str(out), manifest, "parquet", overwrite=False)
    message = str(raised.value)
    assert message.startswith(f"--out {out}: cannot make the folder (") and "\n" not in message

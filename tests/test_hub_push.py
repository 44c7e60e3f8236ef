"""Pushes to the Hub are checked before the work they publish (a token the hub accepts), and `prepare --push` sends
the prepared dataset with every split; the hub is a stand-in here (no network)."""

from __future__ import annotations

import datasets

from deepsynth_ocr.cli import main

from .conftest import SAMPLES


class Accepting:
    def whoami(self, token):
        return {"name": "someone"}


def test_prepare_push_checks_the_token_before_reading_a_row_and_pushes_every_split(tmp_path, monkeypatch, capsys):
    pushed = []
    monkeypatch.setattr(datasets.DatasetDict, "push_to_hub", lambda self, repo_id, private, commit_message:
                        pushed.append((repo_id, private, {name: len(split) for name, split in self.items()})))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # no token saved by a login either
    out = tmp_path / "prepared"
    argv = ["prepare", str(SAMPLES / "train.jsonl"), "-o", str(out), "--push", "someone/ocr-lines",
            "-s", "prepare.validation_size=4"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "prepare.hub_repo_id 'someone/ocr-lines': no Hugging Face token here" in err and err.count("\n") == 1
    assert not out.exists() and pushed == []  # nothing read, nothing written
    monkeypatch.setenv("HF_TOKEN", "hf_test_0123456789abcdef")
    monkeypatch.setattr("huggingface_hub.HfApi", Accepting)
    assert main(argv) == 0
    assert pushed == [("someone/ocr-lines", True, {"train": 28, "validation": 4})]
    assert (out / "manifest.json").is_file()  # the local copy is kept as well

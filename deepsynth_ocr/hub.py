"""What a push to the Hugging Face Hub needs, checked before the work it would publish: a token, which the hub
accepts. Used by ``export`` (a model) and ``prepare`` (a dataset), so neither fails only at its end."""

from __future__ import annotations

from deepsynth_ocr.errors import UserError


def check_push_credentials(repo_id: str, setting: str) -> str:
    """The account a push to ``repo_id`` would be made as; a one-line ``UserError`` naming ``setting`` (the config
    field that asked for the push) otherwise. The token is never printed."""
    from huggingface_hub import HfApi, get_token

    token = get_token()
    if not token:
        raise UserError(f"{setting} {repo_id!r}: no Hugging Face token here; set HF_TOKEN (or run `hf auth login`) "
                        f"first, or leave {setting} empty to skip the push")
    try:
        account = HfApi().whoami(token=token)
    except Exception as e:  # offline, a revoked token, a hub error: each stops the job before it starts
        raise UserError(f"{setting} {repo_id!r}: the hub did not accept the token or could not be reached "
                        f"({type(e).__name__}); nothing was done") from None
    return str(account.get("name", "?"))

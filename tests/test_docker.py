"""No Docker engine runs here, so check statically that every command, module and path named in
docker/Dockerfile, docker/Dockerfile.cpu, docker/compose.yaml and the Makefile exists and resolves
(the class of bug where a container's CMD names a module that does not exist)."""

import contextlib
import importlib.util
import io
import json
import re
import shlex

import pytest
import tomllib
import yaml

from deepsynth_ocr.cli import main as cli_main

from .conftest import ROOT

DOCKERFILES = [ROOT / "docker" / "Dockerfile", ROOT / "docker" / "Dockerfile.cpu"]
COMPOSE = ROOT / "docker" / "compose.yaml"
SCRIPTS = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"])
# Executables the images get from pinned requirements (not console scripts of this repo).
REQUIREMENT_BINARIES = {"papermill": "papermill", "pip": None, "python": None, "python3": None}
REPO_PATH = re.compile(r"^(configs|benchmarks|notebooks|data|docker|deepsynth_ocr|requirements)[\w./-]*$")


def _subcommand_exists(name: str) -> bool:
    with contextlib.redirect_stdout(io.StringIO()), pytest.raises(SystemExit) as exit_info:
        cli_main([name, "--help"])
    return exit_info.value.code == 0


def check_command(argv: list[str], where: str) -> list[str]:
    """Problems with one command line: unknown executable, module, subcommand, notebook or path."""
    problems = []
    if not argv:
        return problems
    exe = argv[0].rsplit("/", 1)[-1]
    if exe not in SCRIPTS and exe not in REQUIREMENT_BINARIES:
        problems.append(f"{where}: executable {argv[0]!r} is neither a console script of pyproject.toml nor a known binary")
    binary_requirement = REQUIREMENT_BINARIES.get(exe)
    if binary_requirement and binary_requirement not in (ROOT / "requirements-training.txt").read_text():
        problems.append(f"{where}: {exe} is not pinned in requirements-training.txt")
    for i, tok in enumerate(argv):
        # python's own -m only (pytest's -m takes a marker expression)
        if tok == "-m" and exe.startswith("python") and "-m" not in argv[1:i] and importlib.util.find_spec(argv[i + 1]) is None:
            problems.append(f"{where}: module {argv[i + 1]!r} does not exist")
        if REPO_PATH.match(tok) and argv[i - 1] != "-m" and not (ROOT / tok).exists():
            problems.append(f"{where}: path {tok!r} does not exist in the repository")
    if exe in SCRIPTS and len(argv) > 1 and not argv[1].startswith("-"):
        if not _subcommand_exists(argv[1]):
            problems.append(f"{where}: deepsynth-ocr has no subcommand {argv[1]!r}")
        elif argv[1] == "notebook" and not (ROOT / "notebooks" / f"{argv[2]}.ipynb").is_file():
            problems.append(f"{where}: notebook {argv[2]!r} does not exist")
    return problems


def _instructions(text: str):
    joined = re.sub(r"\\\n", " ", text)
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            yield op.upper(), rest.strip()


def check_dockerfile(text: str, name: str) -> list[str]:
    problems, entrypoint, cmd, user, args = [], None, None, None, {}
    for op, rest in _instructions(text):
        if op == "ARG" and "=" in rest:
            key, _, default = rest.partition("=")
            args[key] = default.strip('"')
        if op == "FROM":  # the base as built by default: a build argument's default value
            rest = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), rest)
        if op == "FROM" and (":" not in rest or rest.endswith(":latest") or "$" in rest):
            problems.append(f"{name}: base image {rest!r} is not pinned to a tag")
        elif op == "COPY":
            for src in shlex.split(rest)[:-1]:
                if not (ROOT / src).exists():
                    problems.append(f"{name}: COPY source {src!r} does not exist")
        elif op == "RUN":
            for part in re.split(r"&&|;", rest):
                words = shlex.split(part)
                if "-r" in words and not (ROOT / words[words.index("-r") + 1]).is_file():
                    problems.append(f"{name}: requirements file {words[words.index('-r') + 1]!r} does not exist")
                if words[:1] in (["python"], ["python3"]):
                    problems += check_command(words, f"{name} RUN")
        elif op == "ENTRYPOINT":
            entrypoint = json.loads(rest)
        elif op == "CMD":
            cmd = json.loads(rest)
        elif op == "USER":
            user = rest
    if user in (None, "root", "0"):
        problems.append(f"{name}: runs as root (no non-root USER)")
    if entrypoint is None:
        problems.append(f"{name}: no ENTRYPOINT")
    else:
        problems += check_command(entrypoint + (cmd or []), f"{name} ENTRYPOINT+CMD")
    return problems


def check_compose(data: dict) -> list[str]:
    problems = []
    built = {s.get("image") for s in data["services"].values() if "build" in s}
    entrypoints = {}
    for path in DOCKERFILES:
        ep = next((json.loads(r) for op, r in _instructions(path.read_text()) if op == "ENTRYPOINT"), None)
        entrypoints[f"docker/{path.name}"] = ep
    image_entry = {s["image"]: entrypoints.get(s["build"]["dockerfile"]) for s in data["services"].values() if "build" in s}
    for name, svc in data["services"].items():
        where = f"compose service {name}"
        if "build" in svc:
            context = (COMPOSE.parent / svc["build"]["context"]).resolve()
            if context != ROOT or not (context / svc["build"]["dockerfile"]).is_file():
                problems.append(f"{where}: build context/dockerfile do not resolve to the repository")
        elif svc.get("image") not in built:
            problems.append(f"{where}: image {svc.get('image')!r} is built by no service")
        entry = svc.get("entrypoint", image_entry.get(svc.get("image")))
        problems += check_command(list(entry or []) + list(svc.get("command", [])), where)
        for volume in svc.get("volumes", []):
            source = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", volume).split(":")[0]  # a variable's default, as compose reads it
            if source.startswith("."):
                if (COMPOSE.parent / source).resolve().parent != ROOT:
                    problems.append(f"{where}: host volume {source!r} is not a directory of the repository")
            elif source not in (data.get("volumes") or {}):
                problems.append(f"{where}: named volume {source!r} is not declared")
    return problems


def check_makefile(text: str) -> list[str]:
    variables = dict(re.findall(r"^([A-Z_]+)\s*[?:]?=\s*(.*)$", text, re.M))
    targets = set(re.findall(r"^([\w.$()/-]+):(?!=)", text, re.M))
    problems = []
    for line in text.splitlines():
        target = re.match(r"^([\w-]+):(?!=)\s*(.*)$", line)
        if target:
            for prereq in target.group(2).split():
                if not prereq.startswith("$(") and prereq not in targets:
                    problems.append(f"Makefile {target.group(1)}: prerequisite {prereq!r} is not a target")
        if not line.startswith("\t"):
            continue
        expanded = line.strip().lstrip("@")
        for _ in range(3):
            expanded = re.sub(r"\$\((\w+)\)", lambda m: variables.get(m.group(1), m.group(0)), expanded)
        for part in re.split(r"&&|;|\|\|", expanded):
            words = [w for w in shlex.split(part.replace("\\", "")) if not w.startswith(">")]
            exe = words[0].rsplit("/", 1)[-1] if words else ""
            if exe in SCRIPTS or (exe.startswith("python") and "-m" in words):
                problems += check_command(words, f"Makefile `{part.strip()}`")
    return problems


def test_dockerfiles_name_only_things_that_exist():
    for path in DOCKERFILES:
        assert check_dockerfile(path.read_text(), path.name) == []


def test_gpu_image_has_the_training_stack_and_both_entrypoints():
    text = (ROOT / "docker" / "Dockerfile").read_text()
    assert "nvidia/cuda:" in text and "requirements-training.txt" in text
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    assert services["notebook"]["entrypoint"] == ["papermill"]
    assert "papermill==" in (ROOT / "requirements-training.txt").read_text()


def test_compose_mounts_runs_and_hf_cache_as_volumes():
    data = yaml.safe_load(COMPOSE.read_text())
    assert check_compose(data) == []
    mounts = {v.split(":")[1] for v in data["services"]["train"]["volumes"]}
    assert mounts == {"/app/runs", "/home/ocr/.cache/huggingface"}


def test_makefile_commands_resolve():
    text = (ROOT / "Makefile").read_text()
    assert check_makefile(text) == []
    assert "gpu-smoke:" in text and "deepsynth_ocr.gpu_smoke" in text


def test_the_checker_catches_a_cmd_naming_a_missing_module_or_path():
    bad = ('FROM python:3.11-slim\nUSER ocr\nCOPY no_such_dir ./x\n'
           'ENTRYPOINT ["python", "-m", "deepsynth_ocr.no_such_module"]\nCMD ["configs/missing.yaml"]\n')
    problems = " | ".join(check_dockerfile(bad, "Dockerfile.bad"))
    assert "no_such_dir" in problems and "deepsynth_ocr.no_such_module" in problems and "configs/missing.yaml" in problems
    assert check_command(["deepsynth-ocr", "no-such-subcommand"], "x")
    assert check_makefile("x:\n\t$(BIN)/python -m deepsynth_ocr.nope\nBIN := .venv/bin\n")
    assert check_dockerfile("FROM python:latest\nENTRYPOINT [\"deepsynth-ocr\"]\n", "root")  # unpinned, root
    assert "not pinned" in " ".join(check_dockerfile("ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nUSER ocr\n", "no default"))


def _copied_paths(dockerfile) -> set[str]:
    return {m.group(1) for m in re.finditer(r"^COPY (\S+) ", dockerfile.read_text(), re.M)}


@pytest.mark.parametrize("dockerfile", ["Dockerfile.cpu", "Dockerfile"])
def test_both_images_hold_everything_the_smoke_config_and_the_gpu_proof_read(dockerfile):
    """GPU_AUDIT.md item 5 and GPU_AUDIT_3 N2: configs/smoke.yaml (which the GPU proof's cases start from) needs
    the smoke domain and the bundled tiny base, in the CPU image and in the GPU image."""
    from deepsynth_ocr.config import RunConfig
    from deepsynth_ocr.models import tiny

    cfg = RunConfig.from_yaml(ROOT / "configs" / "smoke.yaml")
    needed = {cfg.data.train_path, cfg.data.eval_path, str(tiny.BUNDLED_BASE.relative_to(ROOT))}
    copied = _copied_paths(ROOT / "docker" / dockerfile)
    missing = [p for p in needed if not any(p == c or p.startswith(c.rstrip("/") + "/") for c in copied)]
    assert not missing, f"docker/{dockerfile} does not COPY {missing}"


# PyPI's CUDA build of each torch release the image may pin (the +cuXYZ of its wheel's nvidia-* deps).
PYPI_TORCH_CUDA = {"2.14.1": "13.0", "2.13.0": "12.8"}


def test_torch_and_the_gpu_base_image_agree_on_one_cuda_and_xformers_is_not_pinned():
    """GPU_AUDIT.md item 10: a CUDA 13.0 torch on a CUDA 12.8 base lets an old driver pass `docker run`
    and the run then falls back to the CPU. xformers comes only as Unsloth's own dependency (GPU_AUDIT_3 N3)."""
    text = (ROOT / "docker" / "Dockerfile").read_text()
    torch_pin = re.search(r"pip install [^\n]*torch==([\d.]+)", text).group(1)
    base_cuda = re.search(r"^ARG BASE_IMAGE=nvidia/cuda:(\d+\.\d+)\.\d+-", text, re.M).group(1)
    assert PYPI_TORCH_CUDA[torch_pin] == base_cuda
    training = (ROOT / "requirements-training.txt").read_text()
    assert not re.search(r"^(torch|xformers)\b", training, re.M)  # Colab keeps its own CUDA torch
    for notebook in sorted((ROOT / "notebooks").glob("*.py")):
        assert "torch==" not in notebook.read_text(), notebook.name


def test_the_serve_services_are_probed_on_ready_and_stop_after_the_longest_request():
    """The health check asks /ready on the port the server listens on; the stop grace period outlasts
    a request's timeout, so SIGTERM's graceful drain is not cut short by the engine's SIGKILL."""
    from deepsynth_ocr.config import ServeConfig

    services = yaml.safe_load(COMPOSE.read_text())["services"]
    timeout = ServeConfig().request_timeout_s
    for name in ("serve", "serve-cpu"):
        svc = services[name]
        command = svc["command"]
        port = command[command.index("--port") + 1]
        assert command[command.index("--host") + 1] == "0.0.0.0", name  # reachable through the published port
        assert any(p.endswith(f":{port}") and p.startswith("127.0.0.1:") for p in svc["ports"]), name
        probe = " ".join(svc["healthcheck"]["test"])
        assert f"127.0.0.1:{port}/ready" in probe, name
        assert int(svc["stop_grace_period"].rstrip("s")) > timeout, name
    for requirements in ("requirements-cpu.txt", "requirements-training.txt"):  # what each image installs
        text = (ROOT / requirements).read_text()
        assert all(re.search(rf"^{pkg}==", text, re.M) for pkg in ("fastapi", "uvicorn", "prometheus-client", "python-multipart")), requirements


def test_the_ui_service_keeps_its_state_on_the_runs_volume_needs_a_token_and_is_probed_on_health():
    svc = yaml.safe_load(COMPOSE.read_text())["services"]["ui"]
    command = svc["command"]
    port = command[command.index("--port") + 1]
    assert command[0] == "ui" and svc["image"] == "deepsynth-ocr:cpu"
    assert "../runs:/app/runs" in svc["volumes"]  # runs and the queue (runs/.ui) outlive the container
    assert "${DATA_DIR:-../data}:/app/user-data" in svc["volumes"]  # the user's documents, a data root
    assert _set(command)["ui.data_roots"] == ["data", "user-data"]
    assert svc["environment"]["DEEPSYNTH_UI_TOKEN"].startswith("${DEEPSYNTH_UI_TOKEN:?")  # no token, no start
    assert svc["ports"] == [f"127.0.0.1:{port}:{port}"]
    assert f"127.0.0.1:{port}/health" in " ".join(svc["healthcheck"]["test"])
    assert re.search(r"^Jinja2==", (ROOT / "requirements-cpu.txt").read_text(), re.M)


def _set(command: list[str]) -> dict:
    """The ``-s key=value`` overrides of a compose command, parsed as the CLI parses them."""
    from deepsynth_ocr.config import parse_value

    return {k: parse_value(v) for k, v in (command[i + 1].split("=", 1) for i, a in enumerate(command) if a == "-s")}


def test_the_gpu_ui_reserves_the_gpus_and_mounts_the_model_cache_and_the_users_data():
    """Issue 31: the UI offers GPU jobs, so a variant runs on the GPU image with the GPUs, the weights cache and the
    data it launches on; every long-running service has a health check."""
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    gpu_ui, cpu_ui = services["ui-gpu"], services["ui"]
    assert gpu_ui["image"] == "deepsynth-ocr:gpu" and gpu_ui["command"] == cpu_ui["command"]
    (device,) = gpu_ui["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"] and device["count"] == "all"
    assert set(gpu_ui["volumes"]) == set(cpu_ui["volumes"]) | {"hf-cache:/home/ocr/.cache/huggingface"}
    assert gpu_ui["environment"]["DEEPSYNTH_UI_TOKEN"].startswith("${DEEPSYNTH_UI_TOKEN:?")
    long_running = [name for name, svc in services.items() if "ports" in svc]
    assert sorted(long_running) == ["serve", "serve-cpu", "ui", "ui-gpu"]
    assert all("healthcheck" in services[name] for name in long_running)


def test_the_gpu_image_installs_the_opentelemetry_packages_the_cpu_stack_pins():
    pins = {}
    for requirements in ("requirements-cpu.txt", "requirements-training.txt"):
        text = (ROOT / requirements).read_text()
        pins[requirements] = dict(re.findall(r"^(opentelemetry-[a-z-]+)==(\S+)", text, re.M))
    assert len(pins["requirements-cpu.txt"]) == 3 and pins["requirements-training.txt"] == pins["requirements-cpu.txt"]


def test_the_cpu_image_lock_agrees_with_every_pin_of_requirements_cpu():
    """docker/constraints-cpu.txt holds the CPU image to one package set; a pin bumped in requirements-cpu.txt
    without regenerating it would make the image build fail (or drift), so the two must agree."""
    def pins(path):
        out = {}
        for line in path.read_text().splitlines():
            line = line.split("#")[0].strip()
            if "==" in line:
                name, _, version = line.partition("==")
                out[re.sub(r"[-_.]+", "-", name.split("[")[0]).lower()] = version
        return out

    lock, wanted = pins(ROOT / "docker" / "constraints-cpu.txt"), pins(ROOT / "requirements-cpu.txt")
    assert lock["torch"] == wanted["torch"] + "+cpu"
    stale = {n: (v, lock.get(n)) for n, v in wanted.items() if n != "torch" and lock.get(n) != v}
    assert not stale, f"regenerate docker/constraints-cpu.txt (docs/gpu.md): {stale}"
    assert "docker/constraints-cpu.txt" in (ROOT / "docker" / "Dockerfile.cpu").read_text()

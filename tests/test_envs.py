"""The conda environments in envs/ pin the same versions as requirements.txt, the one place of pins."""

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def pins(lines):
    out = {}
    for line in lines:
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==")
            out[name.strip().lower()] = version.strip()
    return out


def env_pins(path):
    deps = yaml.safe_load(path.read_text())["dependencies"]
    lines = [d for d in deps if isinstance(d, str)]
    for d in deps:
        if isinstance(d, dict):
            lines += d.get("pip", [])
    # conda writes one '=' for a version; a bare name (python, pip) pins nothing
    return pins(line.replace("=", "==", 1) if "==" not in line and "=" in line else line for line in lines)


def test_every_rule_environment_exists():
    rules = "".join(p.read_text() for p in (REPO / "rules").glob("*.smk"))
    assert '"../envs/steps.yaml"' in rules
    assert 'f"../envs/{_spec[\'backend\']}.yaml"' in rules
    schema = yaml.safe_load((REPO / "segbench" / "schemas" / "config.schema.yaml").read_text())
    backends = schema["properties"]["runs"]["additionalProperties"]["properties"]["backend"]["enum"]
    for name in ["steps", *backends]:
        assert (REPO / "envs" / f"{name}.yaml").is_file(), name


def test_conda_environments_agree_with_requirements():
    required = pins((REPO / "requirements.txt").read_text().splitlines())
    torch_extra = pins((REPO / "requirements-torch.txt").read_text().splitlines())
    assert not set(required) & set(torch_extra)  # each package pinned in one place
    required.update(torch_extra)
    for env in sorted((REPO / "envs").glob("*.yaml")):
        for name, version in env_pins(env).items():
            if name == "python":
                assert version.startswith("3.11"), env.name  # Boost.Python of Debian 12, which pycaffe links
                continue
            assert name in required, f"{env.name}: {name} is not pinned in requirements.txt"
            assert version == required[name], f"{env.name}: {name}=={version}, requirements.txt has {required[name]}"

"""deploy/: the Dockerfile, KubeRay manifests and cluster-launcher config agree with each other and with the
pins (fast, no cluster). Each check is a function returning the problems it finds; the real files must have
none, and a mutated copy of them must make each check report its problem (so no check is vacuous)."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parents[1]
DEPLOY = ROOT / "deploy"
KUBERAY = DEPLOY / "kuberay"
SHARED_MOUNT = "/mnt/gapinit"


# ---------------------------------------------------------------------------------------------- loading


def load_all(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def the(kind: str) -> dict:
    """The one document of ``kind`` under deploy/kuberay."""
    found = [d for p in sorted(KUBERAY.glob("*.yaml")) for d in load_all(p) if d.get("kind") == kind]
    assert len(found) == 1, f"expected one {kind} under deploy/kuberay, found {len(found)}"
    return found[0]


def ray_pin() -> str:
    pins = re.findall(r"^ray(?:\[[^\]]*\])?==(\S+)\s*$", (ROOT / "constraints.txt").read_text(), re.M)
    assert len(pins) == 1, "constraints.txt must pin ray exactly once"
    return pins[0]


def package_version() -> str:
    return re.search(r'^version\s*=\s*"([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out, buf = [], ""
    for line in text.splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if buf and line.lstrip().startswith("#"):
            continue
        buf += line.rstrip()
        if buf.endswith("\\"):
            buf = buf[:-1] + " "
            continue
        word, _, rest = buf.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def dockerfile_args(instructions: list[tuple[str, str]]) -> dict[str, str]:
    args = {}
    for word, rest in instructions:
        if word == "ARG" and "=" in rest:
            name, _, value = rest.partition("=")
            args.setdefault(name.strip(), value.strip().strip('"'))
    return args


def substitute(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), m.group(0)), text)


def readme_build_tag(text: str) -> str:
    tags = re.findall(r"docker build -f deploy/Dockerfile -t (\S+) \.", text)
    assert len(tags) == 1, "deploy/README.md must show one `docker build -f deploy/Dockerfile -t TAG .`"
    return tags[0]


def pod_containers(template: dict) -> list[dict]:
    return template.get("spec", {}).get("containers", [])


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env") or []}


def mounts_at(template: dict, path: str) -> set[str]:
    """Names of the PVCs mounted at ``path`` in every container of the pod template."""
    volumes = {v["name"]: v for v in template.get("spec", {}).get("volumes") or []}
    claims = set()
    for c in pod_containers(template):
        here = {
            volumes.get(m["name"], {}).get("persistentVolumeClaim", {}).get("claimName")
            for m in c.get("volumeMounts") or []
            if m.get("mountPath") == path
        }
        here.discard(None)
        claims |= here or {f"<nothing in {c.get('name')}>"}
    return claims


# ------------------------------------------------------------------------------------------------ checks


def check_auth_env(containers: list[tuple[str, dict]], secret: dict) -> list[str]:
    """RAY_AUTH_MODE=token and RAY_AUTH_TOKEN from the Secret on every container."""
    name = secret["metadata"]["name"]
    (key,) = secret.get("stringData") or secret.get("data")
    problems = []
    for where, c in containers:
        env = env_of(c)
        if env.get("RAY_AUTH_MODE", {}).get("value") != "token":
            problems.append(f"{where}: RAY_AUTH_MODE is not 'token'")
        ref = env.get("RAY_AUTH_TOKEN", {}).get("valueFrom", {}).get("secretKeyRef", {})
        if (ref.get("name"), ref.get("key")) != (name, key):
            problems.append(f"{where}: RAY_AUTH_TOKEN does not come from Secret {name}/{key}")
        if "value" in env.get("RAY_AUTH_TOKEN", {}):
            problems.append(f"{where}: RAY_AUTH_TOKEN has a literal value")
    return problems


def check_secret(secret: dict) -> list[str]:
    data = secret.get("stringData") or secret.get("data") or {}
    problems = [] if list(data) == ["auth_token"] else [f"Secret keys {list(data)} != ['auth_token']"]
    if any(str(v or "").strip() for v in data.values()):
        problems.append("the Secret in git holds a token value: it must stay empty (create it with kubectl)")
    return problems


def check_pvc(pvc: dict) -> list[str]:
    modes = pvc.get("spec", {}).get("accessModes") or []
    return [] if modes == ["ReadWriteMany"] else [f"PVC accessModes {modes} != ['ReadWriteMany']"]


def cluster_containers(rc: dict) -> list[tuple[str, dict]]:
    spec = rc["spec"]
    out = [(f"head/{c.get('name')}", c) for c in pod_containers(spec["headGroupSpec"]["template"])]
    for g in spec.get("workerGroupSpecs") or []:
        out += [(f"{g.get('groupName')}/{c.get('name')}", c) for c in pod_containers(g["template"])]
    if spec.get("enableInTreeAutoscaling"):
        out.append(("autoscaler", spec.get("autoscalerOptions") or {}))
    return out


def check_raycluster(rc: dict, secret: dict, pvc: dict, image: str, ray_version: str) -> list[str]:
    problems = []
    if (rc.get("apiVersion"), rc.get("kind")) != ("ray.io/v1", "RayCluster"):
        problems.append("not a ray.io/v1 RayCluster")
    spec = rc.get("spec", {})
    if str(spec.get("rayVersion")) != ray_version:
        problems.append(f"rayVersion {spec.get('rayVersion')} != the ray pin {ray_version}")
    head = spec.get("headGroupSpec")
    if not head:
        return [*problems, "no headGroupSpec"]
    if str(head.get("rayStartParams", {}).get("num-cpus")) != "0":
        problems.append("head rayStartParams num-cpus is not '0' (trials could land on the head)")
    if head.get("serviceType", "ClusterIP") != "ClusterIP":
        problems.append(f"head serviceType {head.get('serviceType')}: the Jobs API must not be exposed")
    ports = [p.get("containerPort") for c in pod_containers(head["template"]) for p in c.get("ports") or []]
    if 8265 not in ports:
        problems.append("head container does not expose the dashboard port 8265")
    groups = spec.get("workerGroupSpecs") or []
    if not groups:
        problems.append("no workerGroupSpecs")
    for g in groups:
        for c in pod_containers(g["template"]):
            res = c.get("resources", {})
            lim = res.get("limits", {}).get("nvidia.com/gpu")
            if not lim or int(lim) < 1:
                problems.append(f"worker group {g.get('groupName')}: no nvidia.com/gpu limit")
            if res.get("requests", {}).get("nvidia.com/gpu", lim) != lim:
                problems.append(f"worker group {g.get('groupName')}: GPU request != limit")
        if not g.get("minReplicas", 0) <= g.get("replicas", 0) <= g.get("maxReplicas", 0):
            problems.append(f"worker group {g.get('groupName')}: not minReplicas <= replicas <= maxReplicas")
    claim = pvc["metadata"]["name"]
    for where, template in [("head", head["template"])] + [
        (g.get("groupName"), g["template"]) for g in groups
    ]:
        claims = mounts_at(template, SHARED_MOUNT)
        if claims != {claim}:
            problems.append(f"{where}: {SHARED_MOUNT} is not PVC {claim} in every container ({claims})")
    for where, c in cluster_containers(rc):
        if where != "autoscaler" and c.get("image") != image:
            problems.append(f"{where}: image {c.get('image')} != {image}")
    return problems + check_auth_env(cluster_containers(rc), secret)


def check_rayjob(job: dict, rc: dict, secret: dict, image: str) -> list[str]:
    problems = []
    if (job.get("apiVersion"), job.get("kind")) != ("ray.io/v1", "RayJob"):
        problems.append("not a ray.io/v1 RayJob")
    spec = job.get("spec", {})
    m = re.fullmatch(r"python -m gapinit_ray\.cli run (\S+\.ya?ml)(?: .*)?", spec.get("entrypoint", ""))
    if not m:
        return [*problems, f"entrypoint {spec.get('entrypoint')!r} does not run `gapinit_ray.cli run SPEC`"]
    spec_path = m.group(1)
    if not spec_path.startswith(SHARED_MOUNT + "/"):
        problems.append(f"the spec {spec_path} is not on the shared volume {SHARED_MOUNT}")
    selector = spec.get("clusterSelector", {}).get("ray.io/cluster")
    if "rayClusterSpec" in spec:
        images = [c.get("image") for _, c in cluster_containers({"spec": spec["rayClusterSpec"]})]
    elif selector == rc["metadata"]["name"]:
        images = []
    else:
        problems.append(f"clusterSelector {selector!r} does not name the RayCluster {rc['metadata']['name']}")
        images = []
    submitter = pod_containers(spec.get("submitterPodTemplate", {}))
    images += [c.get("image") for c in submitter]
    if not images or set(images) != {image}:
        problems.append(f"RayJob images {images} != the RayCluster's {image}")
    problems += check_auth_env([(f"submitter/{c.get('name')}", c) for c in submitter], secret)
    # the metadata `gapinit submit` sets, consistent with the spec of that name in sweeps/
    meta = spec.get("metadata") or {}
    shipped = ROOT / "sweeps" / Path(spec_path).name
    if shipped.exists():
        sweep = yaml.safe_load(shipped.read_text())
        if (meta.get("gapinit_sweep"), meta.get("storage")) != (sweep["name"], sweep["storage"]):
            problems.append(f"metadata {meta} does not match {shipped.name}'s name and storage")
    elif not meta.get("gapinit_sweep"):
        problems.append("metadata has no gapinit_sweep (gapinit list would not show the job)")
    storage = str(meta.get("storage", ""))
    if "://" not in storage and not storage.startswith(SHARED_MOUNT + "/"):
        problems.append(f"storage {storage!r} is neither on {SHARED_MOUNT} nor a URI")
    return problems


def check_launcher(cfg: dict, image: str) -> list[str]:
    problems = []
    types = cfg.get("available_node_types") or {}
    head_type = cfg.get("head_node_type")
    if head_type not in types:
        return [f"head_node_type {head_type!r} is not one of available_node_types"]
    if types[head_type].get("resources", {}).get("CPU") != 0:
        problems.append("the head node type does not set resources CPU: 0")
    workers = {k: v for k, v in types.items() if k != head_type}
    gpu_workers = [k for k, v in workers.items() if v.get("resources", {}).get("GPU", 0) >= 1]
    if not gpu_workers:
        problems.append("no GPU worker node type")
    for k in gpu_workers:
        t = types[k]
        if not 0 <= t.get("min_workers", 0) <= t.get("max_workers", -1) <= cfg.get("max_workers", -1):
            problems.append(f"{k}: not 0 <= min_workers <= max_workers <= cluster max_workers")
    docker = cfg.get("docker") or {}
    images = {docker.get("image"), docker.get("head_image") or docker.get("image")}
    images |= {docker.get("worker_image") or docker.get("image")}
    images |= {(t.get("docker") or {}).get("worker_image") or docker.get("image") for t in workers.values()}
    if images != {image}:
        problems.append(f"docker images {images} != {image}")
    for section in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in cfg.get(section) or [] if "ray start" in c]
        if not starts or not all("RAY_AUTH_MODE=token" in c for c in starts):
            problems.append(f"{section}: `ray start` without RAY_AUTH_MODE=token")
    if "--env RAY_AUTH_MODE=token" not in docker.get("run_options", []):
        problems.append("docker run_options do not set RAY_AUTH_MODE=token for the container")
    if not any(target.endswith(".ray/auth_token") for target in cfg.get("file_mounts") or {}):
        problems.append("no file_mounts entry puts the token at ~/.ray/auth_token")
    if re.search(r"RAY_AUTH_TOKEN=\S", yaml.safe_dump(cfg)):
        problems.append("a literal RAY_AUTH_TOKEN is in the launcher config")
    return problems


def check_dockerfile(text: str, ray_version: str) -> list[str]:
    instr = dockerfile_instructions(text)
    args = dockerfile_args(instr)
    problems = []
    froms = [substitute(rest, args).split()[0] for word, rest in instr if word == "FROM"]
    if len(froms) != 1:
        return [f"expected one FROM, found {froms}"]
    repo, _, tag = froms[0].partition(":")
    if repo != "rayproject/ray" or not tag.startswith(f"{ray_version}-"):
        problems.append(f"FROM {froms[0]}: not rayproject/ray at the ray pin {ray_version}")
    if not re.search(r"-cu\d+$", tag):
        problems.append(f"FROM {froms[0]}: not a CUDA image")
    runs = [substitute(rest, args) for word, rest in instr if word == "RUN"]
    if not any(re.search(r"pip install .*-c constraints\.txt .*\s\.(\s|$)", r) for r in runs):
        problems.append("the package is not installed with `pip install -c constraints.txt ... .`")
    torch = [r for r in runs if re.search(r"pip install \S*torch==", r)]
    cuda = tag.rsplit("-", 1)[-1]
    if not torch or not all(f"download.pytorch.org/whl/{cuda}" in r for r in torch):
        problems.append(f"torch is not installed from PyTorch's {cuda} index")
    if not any(re.search(r"(^|&&\s*)gapinit --version", r) for r in runs):
        problems.append("no `gapinit --version` smoke check")
    users = [rest for word, rest in instr if word == "USER"]
    if not users or users[-1] in ("root", "0") or users[-1].startswith(("root:", "0:")):
        problems.append(
            f"the image runs as {users[-1] if users else 'the base default'}, not a non-root user"
        )
    for word, rest in instr:
        if word in ("ENV", "ARG") and re.search(
            r"(^|[\s_])(TOKEN|SECRET|PASSWORD|ACCESS_KEY)(\b|_|=)", rest, re.I
        ):
            problems.append(f"{word} {rest}: secrets must not be baked into the image")
    if any(word in ("COPY", "ADD") and re.search(r"(^|\s)\.(\s|$)", rest) for word, rest in instr):
        problems.append("COPY of the whole build context (it may hold tokens, .venv, results)")
    return problems


def check_image_tag(readme: str, manifest_images: set[str], dockerfile: str, ray_version: str) -> list[str]:
    tag = readme_build_tag(readme)
    problems = [] if manifest_images == {tag} else [f"manifest images {manifest_images} != README's {tag}"]
    cuda = dockerfile_args(dockerfile_instructions(dockerfile)).get("CUDA_TAG")
    want = f":{package_version()}-ray{ray_version}-{cuda}"
    if not tag.endswith(want):
        problems.append(f"image tag {tag} does not end in {want} (<version>-ray<ray pin>-<CUDA_TAG>)")
    return problems


# ------------------------------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def docs() -> dict:
    rc = the("RayCluster")
    return {
        "rc": rc,
        "job": the("RayJob"),
        "secret": the("Secret"),
        "pvc": the("PersistentVolumeClaim"),
        "launcher": yaml.safe_load((DEPLOY / "cluster-launcher.yaml").read_text()),
        "dockerfile": (DEPLOY / "Dockerfile").read_text(),
        "readme": (DEPLOY / "README.md").read_text(),
        "image": readme_build_tag((DEPLOY / "README.md").read_text()),
        "ray": ray_pin(),
    }


def run_check(name: str, d: dict) -> list[str]:
    return {
        "raycluster": lambda: check_raycluster(d["rc"], d["secret"], d["pvc"], d["image"], d["ray"]),
        "rayjob": lambda: check_rayjob(d["job"], d["rc"], d["secret"], d["image"]),
        "launcher": lambda: check_launcher(d["launcher"], d["image"]),
        "dockerfile": lambda: check_dockerfile(d["dockerfile"], d["ray"]),
        "secret": lambda: check_secret(d["secret"]),
        "pvc": lambda: check_pvc(d["pvc"]),
        "image_tag": lambda: check_image_tag(
            d["readme"],
            {c["image"] for _, c in cluster_containers(d["rc"]) if "image" in c}
            | {c["image"] for c in pod_containers(d["job"]["spec"]["submitterPodTemplate"])}
            | {d["launcher"]["docker"]["image"]},
            d["dockerfile"],
            d["ray"],
        ),
    }[name]()


def test_every_yaml_under_deploy_parses():
    files = sorted(DEPLOY.rglob("*.yaml")) + sorted(DEPLOY.rglob("*.yml"))
    assert {p.name for p in files} >= {"raycluster.yaml", "rayjob.yaml", "cluster-launcher.yaml"}
    for p in files:
        documents = load_all(p)
        assert documents, f"{p}: no YAML document"
        assert all(isinstance(d, dict) for d in documents), f"{p}: a document is not a mapping"


CHECKS = ["raycluster", "rayjob", "launcher", "dockerfile", "secret", "pvc", "image_tag"]


@pytest.mark.parametrize("name", CHECKS)
def test_shipped_files_pass(docs, name):
    assert run_check(name, docs) == []


def test_launcher_config_is_valid_for_ray():
    ray_util = pytest.importorskip("ray.autoscaler._private.util")
    cfg = yaml.safe_load((DEPLOY / "cluster-launcher.yaml").read_text())
    ray_util.validate_config(ray_util.prepare_config(cfg))  # Ray's own schema check, as `ray up` runs it


def _worker(d):
    return d["rc"]["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]


def _head(d):
    return d["rc"]["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]


def _drop_env(container, name):
    container["env"] = [e for e in container["env"] if e["name"] != name]


def _retag_from(d, old, new):
    d["dockerfile"] = d["dockerfile"].replace(old, new)


MUTATIONS = {
    "head without auth mode": ("raycluster", lambda d: _drop_env(_head(d), "RAY_AUTH_MODE")),
    "worker token literal": (
        "raycluster",
        lambda d: [
            e.update(value="abc") or e.pop("valueFrom")
            for e in _worker(d)["env"]
            if e["name"] == "RAY_AUTH_TOKEN"
        ],
    ),
    "autoscaler without token": (
        "raycluster",
        lambda d: _drop_env(d["rc"]["spec"]["autoscalerOptions"], "RAY_AUTH_TOKEN"),
    ),
    "worker without GPU": ("raycluster", lambda d: _worker(d)["resources"]["limits"].pop("nvidia.com/gpu")),
    "worker mounts elsewhere": (
        "raycluster",
        lambda d: _worker(d)["volumeMounts"][0].update(mountPath="/mnt/other"),
    ),
    "head without dashboard": ("raycluster", lambda d: _head(d).update(ports=[{"containerPort": 6379}])),
    "head takes trials": (
        "raycluster",
        lambda d: d["rc"]["spec"]["headGroupSpec"]["rayStartParams"].pop("num-cpus"),
    ),
    "head LoadBalancer": (
        "raycluster",
        lambda d: d["rc"]["spec"]["headGroupSpec"].update(serviceType="LoadBalancer"),
    ),
    "no head": ("raycluster", lambda d: d["rc"]["spec"].pop("headGroupSpec")),
    "other worker image": ("raycluster", lambda d: _worker(d).update(image="rayproject/ray:2.60.0")),
    "other rayVersion": ("raycluster", lambda d: d["rc"]["spec"].update(rayVersion="2.9.0")),
    "job entrypoint": ("rayjob", lambda d: d["job"]["spec"].update(entrypoint="python train.py")),
    "job image": (
        "rayjob",
        lambda d: d["job"]["spec"]["submitterPodTemplate"]["spec"]["containers"][0].update(image="x:1"),
    ),
    "job selector": (
        "rayjob",
        lambda d: d["job"]["spec"].update(clusterSelector={"ray.io/cluster": "other"}),
    ),
    "job metadata": ("rayjob", lambda d: d["job"]["spec"]["metadata"].update(storage="/tmp/results")),
    "job submitter no token": (
        "rayjob",
        lambda d: _drop_env(
            d["job"]["spec"]["submitterPodTemplate"]["spec"]["containers"][0], "RAY_AUTH_TOKEN"
        ),
    ),
    "launcher head start no auth": (
        "launcher",
        lambda d: d["launcher"].update(head_start_ray_commands=["ray start --head --port=6379"]),
    ),
    "launcher worker start no auth": (
        "launcher",
        lambda d: d["launcher"].update(worker_start_ray_commands=["ray start --address=$RAY_HEAD_IP:6379"]),
    ),
    "launcher image": ("launcher", lambda d: d["launcher"]["docker"].update(worker_image="other:1")),
    "launcher no gpu worker": (
        "launcher",
        lambda d: [t["resources"].pop("GPU", None) for t in d["launcher"]["available_node_types"].values()],
    ),
    "launcher head cpu": (
        "launcher",
        lambda d: d["launcher"]["available_node_types"][d["launcher"]["head_node_type"]].update(resources={}),
    ),
    "launcher bad head type": ("launcher", lambda d: d["launcher"].update(head_node_type="nope")),
    "launcher min > max": (
        "launcher",
        lambda d: [
            t.update(min_workers=99)
            for t in d["launcher"]["available_node_types"].values()
            if "min_workers" in t
        ],
    ),
    "dockerfile other ray": (
        "dockerfile",
        lambda d: _retag_from(d, "RAY_VERSION=2.60.0", "RAY_VERSION=2.59.0"),
    ),
    "dockerfile no constraints": ("dockerfile", lambda d: _retag_from(d, "-c constraints.txt", "")),
    "dockerfile root": ("dockerfile", lambda d: _retag_from(d, "\nUSER ray\n", "\nUSER root\n") or None),
    "dockerfile no smoke": ("dockerfile", lambda d: _retag_from(d, "gapinit --version", "true")),
    "dockerfile cpu torch": ("dockerfile", lambda d: _retag_from(d, "whl/cu128", "whl/cpu")),
    "dockerfile baked token": (
        "dockerfile",
        lambda d: _retag_from(d, "WORKDIR /home/ray\n", "ENV RAY_AUTH_TOKEN=x\n"),
    ),
    "dockerfile copies context": (
        "dockerfile",
        lambda d: _retag_from(d, "COPY --chown=ray:users gapinit_ray", "COPY . .\nCOPY gapinit_ray"),
    ),
    "secret with token": ("secret", lambda d: d["secret"]["stringData"].update(auth_token="0123abcd")),
    "pvc RWO": ("pvc", lambda d: d["pvc"]["spec"].update(accessModes=["ReadWriteOnce"])),
    "readme other tag": ("image_tag", lambda d: d.update(readme=d["readme"].replace("-cu128 .", "-cu126 ."))),
    "manifest other tag": (
        "image_tag",
        lambda d: _head(d).update(image="registry.example.com/gapinit/gapinit-ray:0.0.9"),
    ),
}


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_each_check_can_fail(docs, mutation):
    check, mutate = MUTATIONS[mutation]
    assert run_check(check, docs) == []
    broken = copy.deepcopy(docs)
    mutate(broken)
    assert run_check(check, broken), f"{check} did not notice: {mutation}"


def test_dockerfile_users_are_all_checked(docs):
    """The last USER decides; a later `USER root` after the non-root one is caught."""
    assert check_dockerfile(docs["dockerfile"] + "\nUSER root\n", docs["ray"])

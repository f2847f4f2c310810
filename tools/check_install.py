"""Post-install check: remove torchvision/torchaudio builds that do not match the installed torch.

``spikingjelly`` declares torchvision and torchaudio as dependencies, and the package index has no
CPU builds of them matching a CPU torch: importing them then fails (``operator torchvision::nms
does not exist``) and breaks ``import lightning.pytorch``. The harness needs neither (SpikingJelly's
neuron, ann2snn and op_counter code runs without them), so a build that cannot be imported is
uninstalled. Finally the stack the harness needs is imported once, so a broken install fails here.
"""

from __future__ import annotations

import subprocess
import sys

OPTIONAL = ("torchvision", "torchaudio")
REQUIRED = ("torch", "lightning.pytorch", "spikingjelly.activation_based.neuron",
            "spikingjelly.activation_based.ann2snn", "spikingjelly.activation_based.op_counter",
            "spikingjelly.activation_based.nir_exchange",
            "optuna", "mlflow", "seaborn", "harness")


def importable(module: str) -> tuple[bool, str]:
    proc = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True)
    return proc.returncode == 0, (proc.stderr.strip().splitlines() or [""])[-1]


def installed(dist: str) -> bool:
    proc = subprocess.run([sys.executable, "-m", "pip", "show", "-q", dist], capture_output=True)
    return proc.returncode == 0


def main() -> int:
    for dist in OPTIONAL:
        if installed(dist):
            ok, err = importable(dist)
            if not ok:
                print(f"check_install: removing {dist} (does not match the installed torch: {err})")
                subprocess.run([sys.executable, "-m", "pip", "uninstall", "-y", "-q", dist], check=True)
    code = "; ".join(f"import {m}" for m in REQUIRED)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"check_install: the installed stack does not import:\n{proc.stderr}", file=sys.stderr)
        return 1
    print("check_install: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The installed stack imports cleanly (the torchvision/torchaudio trap of the CPU torch)."""

import subprocess
import sys

import pytest


@pytest.mark.slow
def test_stack_imports_cleanly():
    code = ("import lightning.pytorch, mlflow, optuna, seaborn\n"
            "from spikingjelly.activation_based import neuron, ann2snn, op_counter, functional, surrogate\n"
            "from neurobench.metrics.workload import ActivationSparsity, SynapticOperations\n"
            "import importlib.util\n"
            "for opt in ('torchvision', 'torchaudio'):\n"
            "    if importlib.util.find_spec(opt):\n"
            "        __import__(opt)  # present only if it matches torch\n"
            "print('ok')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith("ok")

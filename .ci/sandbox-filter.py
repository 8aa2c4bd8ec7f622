#!/usr/bin/python3
"""Compile the system call restrictions of a systemd service unit into seccomp BPF programs.

Usage: sandbox-filter.py UNIT OUTDIR

The programs are what .ci/sandbox hands to bwrap, so that a test can run the daemon under the same kernel
interface the unit allows, without a running systemd. They are read from the unit itself rather than
written out here, so that tightening the unit tightens the test too:

- OUTDIR/syscalls.bpf: SystemCallFilter= as systemd applies it. The first line decides allow-list mode,
  later lines add (plain) or remove (`~`) calls; groups are expanded by `systemd-analyze syscall-filter`,
  so they are the groups of the systemd that will run the unit. A call outside the list kills the process
  with SIGSYS, systemd's default action (SystemCallErrorNumber= is honoured when the unit sets it).
  Only the native ABI is allowed (SystemCallArchitectures=native).
- OUTDIR/restrictions.bpf: the settings systemd also enforces with seccomp, as its seccomp-util.c does:
  RestrictAddressFamilies= (socket() with another family fails with EAFNOSUPPORT),
  MemoryDenyWriteExecute= (no mapping both writable and executable, no mprotect() to executable),
  RestrictNamespaces= (no unshare/setns/clone into new namespaces; clone3 fails with ENOSYS, so that libc
  falls back to clone, whose flags can be checked) and LockPersonality= (no personality change).
  These are separate programs because the kernel runs every loaded program and keeps the strictest answer,
  which is how systemd layers them too.

It needs Debian's python3-seccomp, hence /usr/bin/python3.
"""

import errno
import os
import re
import subprocess
import sys

import seccomp

# Calls systemd always allows with an allow list (systemd.exec(5), SystemCallFilter=): without them no
# process could start, exit or return from a signal handler. They are in @default too.
IMPLICIT = ["execve", "exit", "exit_group", "getrlimit", "rt_sigreturn", "sigreturn"]

ADDRESS_FAMILIES = {"AF_UNIX": 1, "AF_LOCAL": 1, "AF_INET": 2, "AF_INET6": 10, "AF_NETLINK": 16, "AF_PACKET": 17}

PROT_WRITE, PROT_EXEC, SHM_EXEC = 0x2, 0x4, 0o100000
NAMESPACE_FLAGS = {
    "cgroup": 0x02000000,
    "ipc": 0x08000000,
    "net": 0x40000000,
    "mnt": 0x00020000,
    "pid": 0x20000000,
    "user": 0x10000000,
    "uts": 0x04000000,
}
# PER_LINUX: the persona a service starts with, and the only one LockPersonality= leaves it.
PER_LINUX = 0


def fail(message):
    print(f"sandbox-filter: {message}", file=sys.stderr)
    sys.exit(1)


def service_settings(path):
    """The (key, value) pairs of the unit's [Service] section, in order; repeated keys are kept."""
    settings, section = [], None
    with open(path, encoding="utf-8") as f:
        for raw in f:
            line = raw.strip()
            if not line or line[0] in "#;":
                continue
            if line.startswith("["):
                section = line
                continue
            if section == "[Service]":
                if line.endswith("\\"):
                    fail(f"{path}: continuation lines are not supported: {line}")
                key, sep, value = line.partition("=")
                if not sep:
                    fail(f"{path}: not a setting: {line}")
                settings.append((key.strip(), value.strip()))
    return settings


def syscall_groups():
    """Every group `systemd-analyze syscall-filter` knows, as {"@name": [members]}."""
    out = subprocess.run(
        ["systemd-analyze", "syscall-filter"], check=True, capture_output=True, text=True
    ).stdout
    groups, current = {}, None
    for line in out.splitlines():
        if re.fullmatch(r"@[a-z0-9-]+", line):
            current = groups.setdefault(line, [])
        elif current is not None and re.fullmatch(r" +[@a-z0-9_-]+", line):
            current.append(line.strip())
        elif not line.strip() or line.lstrip().startswith("#"):
            # Group descriptions, blank lines, and the trailing list of calls in no group.
            if not line.strip():
                current = None
        else:
            fail(f"unexpected line from systemd-analyze syscall-filter: {line!r}")
    if "@system-service" not in groups:
        fail("systemd-analyze syscall-filter lists no @system-service group")
    return groups


def expand(names, groups, seen=None):
    """Syscall names, with groups expanded recursively."""
    seen = set() if seen is None else seen
    result = set()
    for name in names:
        if name.startswith("@"):
            if name not in groups:
                fail(f"unknown system call group {name}")
            if name not in seen:
                seen.add(name)
                result |= expand(groups[name], groups, seen)
        else:
            result.add(name)
    return result


def allowed_syscalls(settings, groups):
    """The allow list SystemCallFilter= lines describe, or None if the unit has none."""
    allowed, mode = set(), None
    for key, value in settings:
        if key != "SystemCallFilter":
            continue
        if value == "":
            allowed, mode = set(), None
            continue
        deny = value.startswith("~")
        names = value.lstrip("~").split()
        if any(":" in n for n in names):
            fail(f"per-call errno suffixes are not supported: SystemCallFilter={value}")
        if mode is None:
            if deny:
                fail("a deny-list SystemCallFilter= is not supported; the unit should start with an allow list")
            mode = "allow"
        if deny:
            allowed -= expand(names, groups)
        else:
            allowed |= expand(names, groups)
    if mode is None:
        return None
    return allowed | set(IMPLICIT)


def errno_number(name):
    number = getattr(errno, name, None)
    if number is None:
        fail(f"unknown errno {name}")
    return number


def value_of(settings, key):
    """The last value of a setting (systemd's rule for single-valued settings), or None."""
    values = [v for k, v in settings if k == key]
    return values[-1] if values else None


def yes(settings, key):
    return (value_of(settings, key) or "no").lower() in ("yes", "true", "on", "1")


def syscall_program(settings, groups):
    allowed = allowed_syscalls(settings, groups)
    if allowed is None:
        fail("the unit has no SystemCallFilter=")
    if value_of(settings, "SystemCallArchitectures") not in ("native", None):
        fail("only SystemCallArchitectures=native is supported")
    error = value_of(settings, "SystemCallErrorNumber")
    default = seccomp.ERRNO(errno_number(error)) if error else seccomp.KILL_PROCESS
    # A new filter covers the native ABI only; calls through another ABI hit the bad-architecture action,
    # which kills, as SystemCallArchitectures=native does.
    f = seccomp.SyscallFilter(defaction=default)
    added, unknown = 0, []
    for name in sorted(allowed):
        try:
            f.add_rule(seccomp.ALLOW, name)
            added += 1
        except (RuntimeError, ValueError):
            # Names of other architectures (arm_fadvise64_64, oldolduname, ...): systemd skips them too.
            unknown.append(name)
    return f, f"{added} calls allowed ({len(unknown)} names not on this architecture), default {error or 'SIGSYS'}"


def restrictions_program(settings):
    f = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    applied = []

    # Several lines are merged; an empty one resets the list (systemd.exec(5)).
    names = None
    for key, value in settings:
        if key == "RestrictAddressFamilies":
            if value.startswith("~"):
                fail("a deny-list RestrictAddressFamilies= is not supported")
            names = None if value == "" else (names or []) + value.split()
    if names:
        families = " ".join(names)
        unknown = [n for n in names if n not in ADDRESS_FAMILIES]
        if unknown:
            fail(f"address families this script does not know: {' '.join(unknown)}")
        keep = sorted({ADDRESS_FAMILIES[n] for n in names})
        refuse = seccomp.ERRNO(errno.EAFNOSUPPORT)
        # Everything below the first, above the last, and each gap between: one comparison per rule.
        f.add_rule(refuse, "socket", seccomp.Arg(0, seccomp.LT, keep[0]))
        f.add_rule(refuse, "socket", seccomp.Arg(0, seccomp.GT, keep[-1]))
        for family in range(keep[0] + 1, keep[-1]):
            if family not in keep:
                f.add_rule(refuse, "socket", seccomp.Arg(0, seccomp.EQ, family))
        applied.append(f"RestrictAddressFamilies={families}")

    if yes(settings, "MemoryDenyWriteExecute"):
        eperm = seccomp.ERRNO(errno.EPERM)
        wx = PROT_WRITE | PROT_EXEC
        f.add_rule(eperm, "mmap", seccomp.Arg(2, seccomp.MASKED_EQ, wx, wx))
        f.add_rule(eperm, "mprotect", seccomp.Arg(2, seccomp.MASKED_EQ, PROT_EXEC, PROT_EXEC))
        f.add_rule(eperm, "pkey_mprotect", seccomp.Arg(2, seccomp.MASKED_EQ, PROT_EXEC, PROT_EXEC))
        f.add_rule(eperm, "shmat", seccomp.Arg(2, seccomp.MASKED_EQ, SHM_EXEC, SHM_EXEC))
        applied.append("MemoryDenyWriteExecute=yes")

    namespaces = value_of(settings, "RestrictNamespaces")
    if namespaces and namespaces.lower() in ("yes", "true", "on", "1"):
        eperm = seccomp.ERRNO(errno.EPERM)
        for flag in NAMESPACE_FLAGS.values():
            f.add_rule(eperm, "unshare", seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag))
            f.add_rule(eperm, "clone", seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag))
        # setns() may join any namespace type the fd names; refuse it outright.
        f.add_rule(eperm, "setns")
        # clone3() takes its flags in memory, which seccomp cannot read: systemd makes it ENOSYS so that
        # the C library falls back to clone(), whose flags are checked above.
        f.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
        applied.append("RestrictNamespaces=yes")
    elif namespaces and namespaces.lower() not in ("no", "false", "off", "0"):
        fail(f"only RestrictNamespaces=yes or no is supported, not {namespaces}")

    if yes(settings, "LockPersonality"):
        f.add_rule(seccomp.ERRNO(errno.EPERM), "personality", seccomp.Arg(0, seccomp.NE, PER_LINUX))
        applied.append("LockPersonality=yes")

    return f, ", ".join(applied) or "nothing to restrict"


def main():
    if len(sys.argv) != 3:
        fail("usage: sandbox-filter.py UNIT OUTDIR")
    unit, outdir = sys.argv[1], sys.argv[2]
    settings = service_settings(unit)
    groups = syscall_groups()
    os.makedirs(outdir, exist_ok=True)
    for name, (program, summary) in (
        ("syscalls.bpf", syscall_program(settings, groups)),
        ("restrictions.bpf", restrictions_program(settings)),
    ):
        with open(os.path.join(outdir, name), "wb") as out:
            program.export_bpf(out)
        if os.environ.get("SANDBOX_VERBOSE"):
            print(f"sandbox-filter: {name}: {summary}", file=sys.stderr)


if __name__ == "__main__":
    main()

"""The kernel command line as grub-mkconfig composes it: /etc/default/grub, then grub.d/*.cfg in
glob order, later assignments winning, with shell semantics; what cannot be evaluated is said."""

from __future__ import annotations

import pytest

from vhdtool import checks
from vhdtool.checks.catalog import Context, Profile, Verdict, run_check
from vhdtool.checks.guest_boot import CLOUDIMG_CFG, DEFAULT_GRUB, GRUB_CFG, UBUNTU_GRUB
from vhdtool.checks.guestlib import cmdlines, grub_defaults
from vhdtool.checks.shellvars import ShellVars

from .fakeguest import KVER, fake_guest

CATALOG = checks.load()
CONSOLE = CATALOG["guest.cmdline.console"]
GRUB_D = "/etc/default/grub.d"


def ctx_of(files) -> Context:
    return Context(profile=Profile(), disk=None, guest=fake_guest(files),
                   generations=frozenset({"V1", "V2"}), guest_requested=True)


def console(files):
    return run_check(CONSOLE, ctx_of(files))


def grub_cfg(args: str) -> str:
    return f"menuentry 'x' {{\n\tlinux\t/boot/vmlinuz-{KVER} root=/dev/sda1 ro {args}\n}}\n"


def env_of(text: str) -> ShellVars:
    env = ShellVars()
    env.source(text, "/f")
    return env


# -- the shell reader ----------------------------------------------------------------------------
@pytest.mark.parametrize("text, name, value", [
    ('A=plain\n', "A", "plain"),
    ('A="two words"  # comment\n', "A", "two words"),
    ("A='$NOT expanded'\n", "A", "$NOT expanded"),
    ('A=x\nA="$A y"\nA="${A} z"\n', "A", "x y z"),
    ('export A="e"\n', "A", "e"),
    ('A=1 B="$A 2"\n', "B", "1 2"),              # assignments left to right
    ('export A=1 B="$A 2"\n', "B", " 2"),        # export's words expand first
    ('A="one \\\n two"\n', "A", "one  two"),    # continuation inside quotes
    ('A=one\\\ntwo\n', "A", "onetwo"),
    ('A="q\\"uote \\$x"\n', "A", 'q"uote $x'),
    ('A=1; B=2\n', "B", "2"),
    ('A=1\nA=2 true\n', "A", "1"),               # before a command: the command's own
    ('A=1\n(A=2)\n', "A", "1"),                  # a subshell
    ('A=1\nf() { A=2; }\n', "A", "1"),           # defining a function runs nothing
    ('A=$UNSET\n', "A", ""),
])
def test_shell_values(text, name, value) -> None:
    v = env_of(text).get(name)
    assert v is not None and v.text == value, v


@pytest.mark.parametrize("text, why", [
    ("A=$(uname -r)\n", "command substitution"),
    ("A=`uname -r`\n", "command substitution"),
    ('A="x ${B:-y}"\n', "parameter expansion"),
    ('A="$1"\n', "special parameter"),
    ("if [ -e /x ]; then\n  A=1\nfi\n", "conditional"),
    ("for i in 1; do A=1; done\n", "conditional"),
    ("A=1\n. /etc/other\n", "'.' may change"),
    ("A=1\nf() { A=2; }\nf\n", "'f' may change"),
    ("A=$(x)\nB=\"$A more\"\n", "$A is not evaluated"),
])
def test_not_evaluated(text, why) -> None:
    v = env_of(text).get("B" if "B=" in text else "A")
    assert v is not None and v.text is None and why in v.why, v


def test_after_a_conditional_later_assignments_count() -> None:
    env = env_of("if true; then A=1; fi\nA=2\ncase x in x) B=1;; esac\nC=3\n")
    assert (env.get("A").text, env.get("B").text, env.get("C").text) == ("2", None, "3")


# -- composition across files ---------------------------------------------------------------------
def test_grub_d_sourced_after_default_grub_in_byte_order() -> None:
    g = fake_guest({f"{GRUB_D}/50-b.cfg": 'X="$X b"\n', f"{GRUB_D}/10-a.cfg": 'X="$X a"\n',
                    f"{GRUB_D}/Z.cfg": 'X="$X Z"\n', f"{GRUB_D}/.hidden.cfg": "X=hidden\n",
                    f"{GRUB_D}/c.cfg.dpkg-old": "X=old\n", DEFAULT_GRUB: "X=grub\n"})
    assert grub_defaults(g).get("X").text == "grub a b Z"


def test_ubuntu_cloud_image_passes() -> None:
    """Fails on the old reader (it read GRUB_CMDLINE_LINUX_DEFAULT="quiet splash" from
    /etc/default/grub only, and judged the recovery entry)."""
    r = console(UBUNTU_GRUB)
    assert r.verdict is Verdict.PASS, r.findings
    g = fake_guest(UBUNTU_GRUB)
    composed = [c for c in cmdlines(ctx_of(UBUNTU_GRUB)) if c.what.startswith("GRUB_CMDLINE")]
    assert composed[0].args == ("console=tty1", "console=ttyS0")
    assert composed[0].path == DEFAULT_GRUB and CLOUDIMG_CFG in composed[0].evidence
    assert g.is_file(CLOUDIMG_CFG)


def test_default_in_grub_d_appended_to_linux() -> None:
    files = {DEFAULT_GRUB: 'GRUB_CMDLINE_LINUX="rootdelay=300"\n',
             f"{GRUB_D}/90-azure.cfg": 'GRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX console=ttyS0"\n',
             GRUB_CFG: grub_cfg("rootdelay=300 console=ttyS0")}
    assert console(files).verdict is Verdict.PASS


@pytest.mark.parametrize("dropins, blamed", [
    # a later drop-in replaces the value that had the console
    ({"50-cloudimg-settings.cfg": 'GRUB_CMDLINE_LINUX_DEFAULT="console=ttyS0"\n',
      "99-local.cfg": 'GRUB_CMDLINE_LINUX_DEFAULT="quiet"\n'}, f"{GRUB_D}/99-local.cfg"),
    # only tty1 in the drop-in
    ({"50-cloudimg-settings.cfg": 'GRUB_CMDLINE_LINUX_DEFAULT="console=tty1"\n'},
     f"{GRUB_D}/50-cloudimg-settings.cfg"),
    # cleared by a drop-in after /etc/default/grub set it
    ({"10-clear.cfg": 'GRUB_CMDLINE_LINUX_DEFAULT=""\n'}, f"{GRUB_D}/10-clear.cfg"),
])
def test_composed_value_without_console_fails(dropins, blamed) -> None:
    files = {DEFAULT_GRUB: 'GRUB_CMDLINE_LINUX=""\nGRUB_CMDLINE_LINUX_DEFAULT="console=ttyS0"\n',
             GRUB_CFG: grub_cfg("console=ttyS0"),
             **{f"{GRUB_D}/{n}": t for n, t in dropins.items()}}
    r = console(files)
    assert r.verdict is Verdict.FAIL
    (f,) = r.findings
    assert "GRUB_CMDLINE_LINUX[_DEFAULT] lacks console=ttyS0" in f.message
    assert blamed in f.evidence


def test_fix_names_the_file_that_sets_grub_cmdline_linux_last() -> None:
    files = {DEFAULT_GRUB: 'GRUB_CMDLINE_LINUX="quiet"\n',
             f"{GRUB_D}/60-x.cfg": 'GRUB_CMDLINE_LINUX="quiet splash"\n',
             GRUB_CFG: grub_cfg("console=ttyS0")}
    (f,) = console(files).findings
    assert f.fix.endswith(f"in {GRUB_D}/60-x.cfg") and f.evidence == f"{GRUB_D}/60-x.cfg:1"


def test_recovery_entries_are_not_judged_but_normal_ones_are() -> None:
    cfg = UBUNTU_GRUB[GRUB_CFG].replace("console=tty1 console=ttyS0", "quiet", 1)
    r = console({**UBUNTU_GRUB, GRUB_CFG: cfg})
    assert r.verdict is Verdict.FAIL
    assert [f.message for f in r.findings] == ["grub.cfg linux lacks console=ttyS0"]


def test_unevaluable_defaults_are_said_not_guessed() -> None:
    files = {DEFAULT_GRUB: 'GRUB_CMDLINE_LINUX="$(cat /etc/cmdline)"\n', GRUB_CFG: None}
    r = console(files)
    assert r.verdict is Verdict.SKIP
    assert "GRUB_CMDLINE_LINUX (/etc/default/grub:1: command substitution) not evaluated" \
        in r.reason
    # grub.cfg is still judged on its own
    r = console({**files, GRUB_CFG: grub_cfg("quiet")})
    assert r.verdict is Verdict.FAIL and len(r.findings) == 1
    assert r.findings[0].evidence.startswith(GRUB_CFG)
    assert console({**files, GRUB_CFG: grub_cfg("console=ttyS0")}).verdict is Verdict.PASS


def test_conditional_drop_in_is_not_guessed() -> None:
    files = {**UBUNTU_GRUB, f"{GRUB_D}/init-select.cfg":
             'if [ -x /sbin/upstart ]; then\n'
             '  GRUB_CMDLINE_LINUX_DEFAULT="$GRUB_CMDLINE_LINUX_DEFAULT init=/sbin/upstart"\nfi\n'}
    ctx = ctx_of(files)
    assert not [c for c in cmdlines(ctx) if c.what.startswith("GRUB_CMDLINE")]
    assert run_check(CONSOLE, ctx).verdict is Verdict.PASS      # grub.cfg has it


# -- BLS type-1 entries (systemd-boot) -------------------------------------------------------------

NO_GRUB = {GRUB_CFG: None, DEFAULT_GRUB: None, "/boot/efi/EFI/debian/grub.cfg": None}


@pytest.mark.parametrize("boot", ["/boot", "/boot/efi", "/efi"])
def test_bls_entries_are_read_wherever_boot_is_mounted(boot: str) -> None:
    """$BOOT (XBOOTLDR or the ESP) at /boot, /boot/efi or /efi; options lines concatenated."""
    entry = f"{boot}/loader/entries/debian-{KVER}.conf"
    files = {**NO_GRUB, entry: f"title Debian\nversion {KVER}\noptions root=UUID=x ro\n"
                               f"linux /debian/{KVER}/linux\noptions\tconsole=ttyS0,115200\n"}
    (c,) = cmdlines(ctx_of(files))
    assert (c.path, c.line, c.what) == (entry, 3, "BLS options")
    assert c.args == ("root=UUID=x", "ro", "console=ttyS0,115200")
    assert console(files).verdict is Verdict.PASS
    files[entry] = f"title Debian\noptions root=UUID=x ro quiet\nlinux /debian/{KVER}/linux\n"
    r = console(files)
    assert r.verdict is Verdict.FAIL and r.findings[0].evidence == f"{entry}:2"


def test_without_any_bootloader_configuration_the_console_check_skips() -> None:
    r = console({**NO_GRUB, "/etc/kernel/cmdline": None})
    assert r.verdict is Verdict.SKIP and "no bootloader configuration" in r.reason

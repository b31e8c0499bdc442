#!/usr/bin/env python3
"""Every command the build, the tests and the benchmarks run must come from a Debian package
that scripts/setup.sh installs (its PKGS list, with their dependencies), from the base
system every Debian has (Essential or Priority: required), or be a documented prerequisite
or a tool the scripts build. On a machine where a forgotten package happens to be
installed, the suite passes anyway; this check is what fails instead.

    check-packages.py [--self-test]

The commands are derived from the sources (git ls-files): command words of the shell
scripts and Makefile recipes (through wrappers such as `timeout`, `env`, `command -v`,
`ip netns exec`), `Command::new("...")`, argument vectors `&["cmd", ...]` and `sh -c`
scripts in the Rust tests, and script interpreters. The in-VM scripts (tests/qemu/vm/)
run on the VM's busybox and are skipped. Each command is found on PATH and its file
mapped to a package with `dpkg -S`.

--self-test also proves the check can fail: for every listed package that some command
needs, the check must fail with that package left out of the list.
"""

import os
import re
import shlex
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The README's prerequisites (installed before `make setup` can run) and what the scripts
# build themselves (scripts/tools.sh, bench/tools.sh, tests/qemu/run.sh, cargo).
PREREQUISITES = {"cargo", "rustc", "rustup", "go", "make", "git"}
BUILT = {"tsbridge", "tsbridge-lab", "tailscale", "tailscaled", "headscale", "containerboot",
         "talos-runner", "cargo-fuzz", "cnitool"}
KEYWORDS = {"if", "then", "else", "elif", "fi", "do", "done", "while", "until", "for", "in",
            "case", "esac", "select", "function", "!", "{", "}", "[[", "]]", "time", "coproc"}
# Words that run the command that follows their options.
WRAPPERS = {"exec", "command", "env", "timeout", "nice", "nohup", "setsid", "xargs", "stdbuf",
            "unshare", "nsenter", "sudo"}
WORD = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*$")
PATH_WORD = re.compile(r"^[A-Za-z0-9_./+-]+$")


def git_files():
    out = subprocess.run(["git", "-C", ROOT, "ls-files"], check=True, capture_output=True,
                         text=True).stdout.split()
    return [f for f in out if not f.startswith("tests/qemu/vm/")]


def bash_builtins():
    out = subprocess.run(["bash", "-c", "compgen -b"], check=True, capture_output=True,
                         text=True).stdout.split()
    return set(out)


# ---------------------------------------------------------------------------- shell


def substitutions(line):
    """The bodies of $(...) and `...` in line, and the line with each replaced by a word."""
    bodies, out, i = [], [], 0
    while i < len(line):
        if line.startswith("$(", i) and not line.startswith("$((", i):
            depth, j = 1, i + 2
            while j < len(line) and depth:
                depth += {"(": 1, ")": -1}.get(line[j], 0)
                j += 1
            bodies.append(line[i + 2:j - 1])
            out.append("SUBST")
            i = j
        elif line[i] == "`":
            j = line.find("`", i + 1)
            j = len(line) if j < 0 else j
            bodies.append(line[i + 1:j])
            out.append("SUBST")
            i = j + 1
        else:
            out.append(line[i])
            i += 1
    return bodies, "".join(out)


def strip_comment(line):
    """line without its comment (a # that starts a word outside quotes)."""
    quote, prev = None, " "
    for i, c in enumerate(line):
        if quote:
            if c == quote and (quote == "'" or prev != "\\"):
                quote = None
        elif c in "'\"":
            quote = c
        elif c == "#" and (prev.isspace() or prev in ";&|("):
            return line[:i]
        prev = c
    return line


def logical_lines(text):
    """Lines with continuations joined, comments and here-document bodies dropped."""
    heredoc, buf = None, ""
    for raw in text.splitlines():
        if heredoc is not None:
            if raw.strip() == heredoc:
                heredoc = None
            continue
        line = buf + strip_comment(raw)
        if line.endswith("\\"):
            buf = line[:-1] + " "
            continue
        buf = ""
        m = re.search(r"<<-?\s*['\"]?(\w+)['\"]?", line)
        if m:
            heredoc = m.group(1)
        yield line


def segment_command(tokens, functions):
    """The commands one simple command runs: its command word, through wrappers (and the
    scripts' own functions, which often take a command: `check "what" cmd args`)."""
    found, i, wrapped = [], 0, False
    while i < len(tokens):
        t = tokens[i]
        i += 1
        if "$" in t or t == "SUBST" or t.isdigit() or t.startswith("-") or re.match(r"^\w+=", t):
            if wrapped or re.match(r"^\w+=", t):
                continue
            return found
        if t in KEYWORDS and not wrapped:
            if t in ("for", "case", "select"):
                return found
            continue
        if t == "ip" and tokens[i:i + 2] == ["netns", "exec"]:
            found.append(t)
            i += 3  # netns exec NS
            wrapped = True
            continue
        if not (WORD.match(t) or PATH_WORD.match(t)):
            if wrapped:
                continue
            return found
        found.append(t)
        if t in WRAPPERS or t in functions:
            wrapped = True
            continue
        return found
    return found


def shell_functions(text):
    return set(re.findall(r"^\s*(?:function\s+)?([\w.-]+)\s*\(\)", text, re.M))


def shell_commands(text, functions=frozenset()):
    functions = functions | shell_functions(text)
    cmds = set()
    for line in logical_lines(text):
        todo = [line]
        while todo:
            bodies, flat = substitutions(todo.pop())
            todo.extend(bodies)
            lex = shlex.shlex(flat, posix=True, punctuation_chars=";&|()<>")
            lex.whitespace_split = True
            lex.commenters = "#"
            try:
                tokens = list(lex)
            except ValueError:
                tokens = flat.split()
            seg = []
            for t in tokens + [";"]:
                if t and set(t) <= set(";&|()<>"):
                    if t in ("<", ">", ">>", "<<", ">&", "<&", "&>"):
                        seg.append("$redirect")
                        continue
                    cmds.update(segment_command([s for s in seg if s != "$redirect"], functions))
                    seg = []
                else:
                    seg.append(t)
    return cmds


def makefile_recipes(text):
    return "\n".join(l[1:].lstrip("@-+") for l in text.splitlines() if l.startswith("\t"))


# ----------------------------------------------------------------------------- rust

RUST_STR = r'"((?:[^"\\]|\\.)*)"'


def rust_commands(text, functions):
    cmds = set(re.findall(r"Command::new\(\s*" + RUST_STR + r"\s*\)", text))
    cmds |= set(re.findall(r"&\[\s*" + RUST_STR, text))
    scripts = re.findall(r'"-c",\s*&?(?:format!\(\s*)?' + RUST_STR, text)
    scripts += re.findall(r"\bsh\(\s*&?(?:format!\(\s*)?" + RUST_STR, text)
    for var in re.findall(r'"-c",\s*&?(\w+)\s*[\],]', text):
        scripts += re.findall(r"let\s+" + var + r"\s*=\s*&?(?:format!\(\s*)?" + RUST_STR, text)
    for s in scripts:
        cmds |= shell_commands(bytes(s, "utf-8").decode("unicode_escape"), functions)
    return cmds


def interpreter(text):
    m = re.match(r"#!\s*(\S+)(?:\s+(\S+))?", text)
    if not m:
        return set()
    return {m.group(2)} if os.path.basename(m.group(1)) == "env" and m.group(2) else {m.group(1)}


def derive():
    """{command: [files it appears in]}"""
    texts = {}
    for f in git_files():
        path = os.path.join(ROOT, f)
        if os.path.isfile(path):
            with open(path, encoding="utf-8", errors="replace") as fh:
                texts[f] = fh.read()
    # lib.sh's functions are everywhere
    functions = set().union(*(shell_functions(t) for f, t in texts.items() if f.endswith(".sh")))
    uses = {}
    for f, text in texts.items():
        cmds = interpreter(text)
        if f.endswith(".sh") or f == ".ci/run":
            cmds |= shell_commands(text, functions)
        elif f == "Makefile":
            cmds |= shell_commands(makefile_recipes(text), functions)
        elif f.endswith(".rs"):
            cmds |= rust_commands(text, functions)
        for c in cmds:
            uses.setdefault(c, []).append(f)
    return uses


# ----------------------------------------------------------------------------- dpkg


def listed_packages():
    with open(os.path.join(ROOT, "scripts/setup.sh"), encoding="utf-8") as fh:
        text = fh.read()
    pkgs = []
    for body in re.findall(r"^\s*PKGS\+?=\(([^)]*)\)", text, re.M):
        pkgs += [w for w in body.split() if not w.startswith("#")]
    if not pkgs:
        sys.exit("error: no PKGS=(...) list found in scripts/setup.sh")
    return pkgs


class Dpkg:
    """The installed packages: file owners, dependencies, priorities (read once)."""

    def __init__(self):
        self.owner = {}
        info = "/var/lib/dpkg/info"
        for name in os.listdir(info):
            if name.endswith(".list"):
                pkg = name[:-5].split(":")[0]
                with open(os.path.join(info, name), encoding="utf-8", errors="replace") as fh:
                    for line in fh:
                        self.owner.setdefault(line.rstrip("\n"), pkg)
        fmt = "${Package}\t${Priority}\t${Essential}\t${Pre-Depends}, ${Depends}\t${Provides}\n"
        out = subprocess.run(["dpkg-query", "-W", "-f=" + fmt], check=True, capture_output=True,
                             text=True).stdout
        self.deps, self.providers, self.base = {}, {}, set()
        for line in out.splitlines():
            pkg, prio, essential, deps, provides = (line.split("\t") + [""] * 5)[:5]
            self.deps[pkg] = [d for d in (x.strip().split(" ")[0].split(":")[0]
                                          for x in re.split(r"[,|]", deps)) if d]
            for v in provides.split(","):
                if v.strip():
                    self.providers.setdefault(v.strip().split(" ")[0], []).append(pkg)
            if prio == "required" or essential == "yes":
                self.base.add(pkg)

    def closure(self, pkgs):
        out, todo = set(), list(pkgs)
        while todo:
            p = todo.pop()
            if p in out:
                continue
            out.add(p)
            todo += self.deps.get(p, []) + self.providers.get(p, [])
        return out


DPKG = None


def dpkg_owner(path):
    return DPKG.owner.get(path)


def merged_usr(path):
    for a, b in (("/usr/bin/", "/bin/"), ("/usr/sbin/", "/sbin/")):
        if path.startswith(a):
            return [path, b + path[len(a):]]
        if path.startswith(b):
            return [path, a + path[len(b):]]
    return [path]


def owner_of(path):
    """The package of path, following symlinks step by step (alternatives, merged /usr)."""
    seen = set()
    while path and path not in seen:
        seen.add(path)
        for p in merged_usr(path):
            pkg = dpkg_owner(p)
            if pkg:
                return pkg
        if not os.path.islink(path):
            break
        path = os.path.join(os.path.dirname(path), os.readlink(path))
    return None


def package_of(cmd):
    """(package, path, note) for a command name or absolute path; package None if unknown."""
    path = cmd if cmd.startswith("/") else shutil.which(cmd)
    if path is None:
        return None, None, "not found on PATH"
    pkg = owner_of(path)
    if pkg is None and not cmd.startswith("/"):
        # Not from a package here (pyenv, /usr/local, ~/.cargo): the package that gives
        # the same command on a plain Debian, if this machine has it too.
        for d in ("/usr/bin/", "/usr/sbin/", "/bin/", "/sbin/"):
            pkg = owner_of(d + cmd) if os.path.exists(d + cmd) else None
            if pkg:
                return pkg, path, f"here {path}, on Debian {d}{cmd}"
    return pkg, path, ""


def check(uses, resolved, listed, base, quiet=False):
    allowed = DPKG.closure(listed) | base
    problems = []
    for cmd in sorted(resolved):
        pkg, path, note = resolved[cmd]
        where = ", ".join(sorted(set(uses[cmd]))[:3])
        if pkg is None:
            problems.append(f"{cmd} ({path or 'not on PATH'}, used in {where}) comes from no "
                            f"Debian package: add its package to PKGS in scripts/setup.sh, or build it "
                            f"in the set-up scripts")
        elif pkg not in allowed:
            problems.append(f"{cmd} ({path}, used in {where}) comes from the package {pkg}, "
                            f"which scripts/setup.sh does not install: add it to PKGS")
        elif not quiet:
            kind = "base" if pkg in base and pkg not in DPKG.closure(listed) else "listed"
            print(f"ok  {cmd:<22} {pkg:<20} {kind}{'  (' + note + ')' if note else ''}")
    return problems


def main():
    global DPKG
    DPKG = Dpkg()
    uses = derive()
    builtins = bash_builtins()
    resolved, skipped = {}, []
    for cmd in sorted(uses):
        name = os.path.basename(cmd)
        if not (WORD.match(cmd) or (cmd.startswith("/") and WORD.match(name))):
            continue
        if name in PREREQUISITES or name in BUILT:
            skipped.append(name)
            continue
        if not cmd.startswith("/") and cmd in builtins and shutil.which(cmd) is None:
            continue
        pkg, path, note = package_of(cmd)
        if path is None:
            # a word in command position that is nothing on this machine: a shell function
            # or a subcommand; the suite itself fails if it was meant to be a program
            continue
        resolved[cmd] = (pkg, path, note)
    listed = listed_packages()
    base = DPKG.base
    problems = check(uses, resolved, listed, base)
    print(f"prerequisites or built by the scripts (not checked): {' '.join(sorted(set(skipped)))}")
    if problems:
        for p in problems:
            print(f"error: {p}", file=sys.stderr)
        sys.exit(1)
    print(f"every command ({len(resolved)}) comes from a listed package or the base system")
    needed = {pkg for pkg, _, _ in resolved.values()}

    def only_via(p):
        rest = [q for q in listed if q != p]
        return needed & (DPKG.closure([p]) - DPKG.closure(rest) - base), rest

    unused = [p for p in listed if not only_via(p)[0]]
    if unused:
        print(f"listed, but no derived command needs it: {' '.join(unused)}")

    if "--self-test" in sys.argv[1:]:
        tested = 0
        for p in listed:
            via, rest = only_via(p)
            if not via:
                continue
            if not check(uses, resolved, rest, base, quiet=True):
                sys.exit(f"error: self-test: without {p} in PKGS the check still passes")
            tested += 1
        if tested == 0:
            sys.exit("error: self-test: no listed package is needed by any derived command")
        print(f"self-test: the check fails without each of the {tested} packages the commands need")


if __name__ == "__main__":
    main()

"""Shell completion for kcm, spp-wakeup and sppsh: bash and zsh scripts made from a grammar, and
the hidden ``__complete`` answers through which those scripts ask the program for what only the
host knows (kcm's pool names, sppsh's VMs).

The scripts carry the static grammar (subcommands, options, what each value is) and walk the
command line themselves, so a TAB costs no Python start-up unless a value needs the host. Such
a value is asked for with ``<program> __complete <what> -- <words before the cursor>``: standard
input closed, errors thrown away, under ``timeout 2`` where there is one; the answer is one
value a line, and the scripts quote each value before it reaches the command line (bash's
``printf %q``, zsh's ``compadd``), so a name read from the host cannot run in the user's shell.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

SHELLS = ("bash", "zsh")
_TOKEN = re.compile(r"[A-Za-z0-9_.+@%/<>=-]+")


@dataclass(frozen=True)
class Kind:
    """What a word of the command line is, as the scripts complete it (a shell-safe token)."""

    token: str


FLAG = Kind("flag")  # an option that takes no value
NONE = Kind("none")  # a value nothing can guess (a number, an address)
DIRS = Kind("dirs")
FILES = Kind("files")
COMMANDS = Kind("commands")  # a command name, from $PATH, aliases and functions
USERS = Kind("users")
DEFAULT = Kind("default")  # the shell's own completion (file names)


def words(*values: str) -> Kind:
    """A value that is one of these words."""
    for value in values:
        if not _TOKEN.fullmatch(value) or "," in value:
            raise ValueError(f"{value!r} cannot be a completion word")
    return Kind("w:" + ",".join(values))


def call(what: str) -> Kind:
    """A value the program lists itself: ``<program> __complete <what>``."""
    if not re.fullmatch(r"[a-z][a-z-]*", what):
        raise ValueError(f"{what!r} cannot name a completion call")
    return Kind(f"call:{what}")


@dataclass(frozen=True)
class Word:
    """An option: its spellings ("-o", "--output"), what its value is, and a phrase on it."""

    names: tuple[str, ...]
    kind: Kind
    help: str


@dataclass(frozen=True)
class Grammar:
    """One level of a command line: its options, its positional arguments, and what the
    words after them are (``None``: nothing)."""

    options: tuple[Word, ...]
    arguments: tuple[Kind, ...]
    rest: Kind | None = None


@dataclass(frozen=True)
class Spec:
    """A program's completion: ``levels`` are its subcommands (none for a program without)."""

    program: str
    aliases: tuple[str, ...]
    how: str  # the command that prints the script, without the shell: "kcm completion"
    top: Grammar
    levels: tuple[tuple[str, str, Grammar], ...] = ()


# -- The scripts -----------------------------------------------------------------------------


def _q(text: str) -> str:
    return shlex.quote(text)


def _safe(token: str) -> str:
    if not _TOKEN.fullmatch(token.replace(":", "").replace(",", "")):
        raise ValueError(f"{token!r} cannot go into a completion script unquoted")
    return token


def _options(grammar: Grammar, top: bool) -> list[Word]:
    help_word = Word(("--help",), FLAG, "show this help" if top else "show its help")
    return [*grammar.options, help_word]


def _spec_case(spec: Spec, zsh: bool) -> str:
    """The ``<prefix>_spec`` function: the grammar of one level into the caller's arrays."""
    entries = [("''", spec.top, True)] + [(_safe(name), g, False) for name, _, g in spec.levels]
    lines = []
    for label, grammar, top in entries:
        names, kinds, descs = [], [], []
        for word in _options(grammar, top):
            for name in word.names:
                names.append(_safe(name))
                kinds.append(_safe(word.kind.token))
                descs.append(_q(word.help))
        args = " ".join(_safe(k.token) for k in grammar.arguments)
        rest = _safe(grammar.rest.token) if grammar.rest else "''"
        body = [f"opts=({' '.join(names)})", f"kinds=({' '.join(kinds)})", f"args=({args})"]
        if zsh:
            body.append(f"descs=({' '.join(descs)})")
        if top:
            subs = " ".join(_safe(name) for name, _, _ in spec.levels)
            body.append(f"subs=({subs})")
            if zsh:
                summaries = " ".join(_q(f"{name}:{summary}") for name, summary, _ in spec.levels)
                body.append(f"sdescs=({summaries})")
        body.append(f"rest={rest}")
        lines.append(f"    {label})\n        " + "\n        ".join(body) + " ;;")
    return "\n".join(lines)


_BASH = r"""# bash completion for @NAMES@, as printed by `@HOW@ bash`.
#   this shell:   source <(@HOW@ bash)
#   per user:     echo 'source <(@HOW@ bash)' >> ~/.bashrc
#   system-wide:  @HOW@ bash > /etc/bash_completion.d/@PROG@
# What only the host knows is asked of the program (`@PROG@ __complete ...`), silently and
# for at most 2 s; each value it gives is quoted (printf %q) before it reaches the line.

@P@_spec() {
    # The grammar of level $1 ('' is the top) into the caller's opts, kinds, args, rest, subs.
    case $1 in
@CASES@
    *) return 1 ;;
    esac
}

@P@_kind() {
    # The kind of option $1 into the caller's kind ('' when it is no option of this level).
    local k
    kind=''
    for k in "${!opts[@]}"; do
        if [[ ${opts[k]} == "$1" ]]; then
            kind=${kinds[k]}
            return 0
        fi
    done
    return 1
}

@P@_call() {
    # Values of $1 from the program itself, one a line, given the words before the cursor.
    local prog=${words[0]}
    [[ $prog == "~/"* ]] && prog=$HOME/${prog:2}
    if type -P timeout >/dev/null 2>&1; then
        timeout 2 "$prog" __complete "$1" -- "${words[@]:1:cword-1}" </dev/null 2>/dev/null
    else
        "$prog" __complete "$1" -- "${words[@]:1:cword-1}" </dev/null 2>/dev/null
    fi
}

@P@_reply() {
    # Offer $1, a whole word; readline replaces only the part of it after $keep.
    COMPREPLY+=("${1:${#keep}}")
}

@P@_values() {
    # Values of kind $1 for the word $2, whose first ${#3} characters ("--pool=") stay.
    local kind=$1 head=$3 value=${2:${#3}} c q
    local -a found=()
    case $kind in
    flag | none) return 0 ;;
    default) compopt -o default; return 0 ;;
    dirs) compopt -o filenames; mapfile -t found < <(compgen -d -- "$value") ;;
    files) compopt -o filenames; mapfile -t found < <(compgen -f -- "$value") ;;
    commands) mapfile -t found < <(compgen -c -- "$value") ;;
    users) mapfile -t found < <(compgen -u -- "$value") ;;
    w:*)
        IFS=, read -r -a q <<<"${kind#w:}"
        for c in "${q[@]}"; do
            [[ $c == "$value"* ]] && found+=("$c")
        done
        ;;
    call:*)
        while IFS= read -r c; do
            [[ -n $c ]] || continue
            printf -v q %q "$c"
            [[ $q == "$value"* ]] && found+=("$q")
        done < <(@P@_call "${kind#call:}")
        ;;
    esac
    for c in "${found[@]}"; do
        @P@_reply "$head$c"
    done
}

@P@_options() {
    # The options of this level that start like $cur and are not on the line yet.
    local k w s
    for k in "${!opts[@]}"; do
        w=${opts[k]}
        for s in "${seen[@]}"; do
            [[ $s == "$w" ]] && continue 2
        done
        [[ ${kinds[k]} != flag && $w == --* ]] && w+="="
        [[ $w == "$cur"* ]] && @P@_reply "$w"
    done
    if [[ ${#COMPREPLY[@]} == 1 && ${COMPREPLY[0]} == *= ]]; then
        compopt -o nospace
    fi
}

@P@() {
    local -a words=() opts=() kinds=() args=() subs=() seen=()
    local rest='' cur='' keep='' kind='' want='' inrest='' w name trimmed breaks
    local line=$COMP_LINE
    local -i i cword n=1 npos=0
    COMPREPLY=()
    # The words as @PROG@ sees them: bash splits "--pool=infra" at '=' (COMP_WORDBREAKS);
    # a piece that no blank parts from the one before it is joined back to it.
    for ((i = 0; i <= COMP_CWORD; i++)); do
        w=${COMP_WORDS[i]}
        trimmed=${line#"${line%%[![:space:]]*}"}
        if ((i > 0)) && [[ $trimmed == "$line" ]]; then
            words[${#words[@]} - 1]+=$w
        else
            words+=("$w")
        fi
        line=${trimmed:${#w}}
    done
    cword=${#words[@]}-1
    cur=${words[cword]}
    # Readline replaces the part of the word after its last break character ('=', ':').
    breaks=${COMP_WORDBREAKS//[^=:]/}
    if [[ -n $breaks && $cur == *["$breaks"]* ]]; then
        keep=${cur%"${cur##*["$breaks"]}"}
    fi

    @P@_spec '' || return 0
    if ((${#subs[@]})); then
        if ((cword == 1)); then
            if [[ $cur == -* ]]; then
                @P@_options
            else
                for w in "${subs[@]}"; do
                    [[ $w == "$cur"* ]] && @P@_reply "$w"
                done
            fi
            return 0
        fi
        @P@_spec "${words[1]}" || return 0
        n=2
    fi
    for ((i = n; i < cword; i++)); do
        w=${words[i]}
        if [[ -n $want ]]; then
            want=''
        elif [[ -n $rest ]] && ((npos >= ${#args[@]})); then
            inrest=1
            break
        elif [[ $w == -- ]]; then
            [[ -n $rest ]] && inrest=1 && break
        elif [[ $w == -?* ]]; then
            name=${w%%=*}
            seen+=("$name")
            if @P@_kind "$name" && [[ $kind != flag && $w != *=* ]]; then
                want=$kind
            fi
        else
            npos+=1
        fi
    done
    if [[ -z $want && -n $rest ]] && ((npos >= ${#args[@]})); then
        inrest=1
    fi

    if [[ -n $want ]]; then
        @P@_values "$want" "$cur" ''
    elif [[ -n $inrest ]]; then
        @P@_values "$rest" "$cur" ''
    elif [[ $cur == -?*=* ]]; then
        name=${cur%%=*}
        if @P@_kind "$name" && [[ $kind != flag ]]; then
            @P@_values "$kind" "$cur" "$name="
        fi
    elif [[ $cur == -* ]]; then
        @P@_options
    elif ((npos < ${#args[@]})); then
        @P@_values "${args[npos]}" "$cur" ''
    fi
    return 0
}

complete -F @P@ @NAMES_LIST@
"""

_ZSH = r"""#compdef @NAMES_LIST@
# zsh completion for @NAMES@, as printed by `@HOW@ zsh`.
#   this shell:   source <(@HOW@ zsh)            (after compinit)
#   per user:     @HOW@ zsh > ~/.zfunc/_@PROG@   (with fpath+=~/.zfunc before compinit)
#   system-wide:  @HOW@ zsh > /usr/local/share/zsh/site-functions/_@PROG@
# What only the host knows is asked of the program (`@PROG@ __complete ...`), silently and
# for at most 2 s; compadd quotes each value it gives before it reaches the line.

@P@_spec() {
    # The grammar of level $1 ('' is the top) into the caller's opts, kinds, descs, args, rest,
    # subs and sdescs.
    case $1 in
@CASES@
    *) return 1 ;;
    esac
}

@P@_kind() {
    local -i k=${opts[(Ie)$1]}
    kind=''
    (( k )) || return 1
    kind=${kinds[k]}
}

@P@_call() {
    local prog=${words[1]}
    [[ $prog == '~/'* ]] && prog=$HOME/${prog#'~/'}
    if (( $+commands[timeout] )); then
        timeout 2 $prog __complete $1 -- "${(@)words[2,CURRENT-1]}" </dev/null 2>/dev/null
    else
        $prog __complete $1 -- "${(@)words[2,CURRENT-1]}" </dev/null 2>/dev/null
    fi
}

@P@_values() {
    # Values of kind $1; with $2 set, the word's "--name=" stays as it is.
    local kind=$1
    local -a found
    [[ -n $2 ]] && compset -P 1 '*='
    case $kind in
    flag|none) return 1 ;;
    dirs) _files -/ ;;
    files|default) _files ;;
    commands) _command_names -e ;;
    users) _users ;;
    w:*) found=(${(s:,:)${kind#w:}}); compadd -a found ;;
    call:*) found=(${(f)"$(@P@_call ${kind#call:})"}); compadd -a found ;;
    esac
}

@P@_options() {
    local -a vspecs fspecs
    local -i k
    for (( k = 1; k <= ${#opts}; k++ )); do
        (( ${seen[(Ie)${opts[k]}]} )) && continue
        if [[ ${kinds[k]} != flag && ${opts[k]} == --* ]]; then
            vspecs+=("${opts[k]}=:${descs[k]}")
        else
            fspecs+=("${opts[k]}:${descs[k]}")
        fi
    done
    (( ${#vspecs} )) && _describe -t options option vspecs -S ''
    (( ${#fspecs} )) && _describe -t options option fspecs
    return 0
}

@P@() {
    local -a opts kinds descs args subs sdescs seen
    local rest='' cur=${words[CURRENT]} kind='' want='' inrest='' w name
    local -i i n=2 npos=0
    @P@_spec '' || return 1
    if (( ${#subs} )); then
        if (( CURRENT == 2 )); then
            if [[ $cur == -* ]]; then
                @P@_options
            else
                _describe -t commands '@PROG@ subcommand' sdescs
            fi
            return
        fi
        @P@_spec "${words[2]}" || return 1
        n=3
    fi
    for (( i = n; i < CURRENT; i++ )); do
        w=${words[i]}
        if [[ -n $want ]]; then
            want=''
        elif [[ -n $rest ]] && (( npos >= ${#args} )); then
            inrest=1
            break
        elif [[ $w == -- ]]; then
            [[ -n $rest ]] && inrest=1 && break
        elif [[ $w == -?* ]]; then
            name=${w%%=*}
            seen+=("$name")
            if @P@_kind "$name" && [[ $kind != flag && $w != *=* ]]; then
                want=$kind
            fi
        else
            npos+=1
        fi
    done
    if [[ -z $want && -n $rest ]] && (( npos >= ${#args} )); then
        inrest=1
    fi

    if [[ -n $want ]]; then
        @P@_values $want
    elif [[ -n $inrest ]]; then
        @P@_values $rest
    elif [[ $cur == -?*=* ]]; then
        name=${cur%%=*}
        @P@_kind "$name" && [[ $kind != flag ]] && @P@_values $kind 1
    elif [[ $cur == -* ]]; then
        @P@_options
    elif (( npos < ${#args} )); then
        @P@_values ${args[npos+1]}
    fi
}

if [[ ${funcstack[1]} == @P@ ]]; then
    @P@ "$@"  # autoloaded from $fpath: this file is the function's first call
elif (( $+functions[compdef] )); then
    compdef @P@ @NAMES_LIST@
else
    print -u2 "@PROG@ completion: run 'autoload -U compinit && compinit' before sourcing it"
fi
"""


def script(shell: str, spec: Spec) -> str:
    """The completion script of ``spec`` for ``shell`` (one of ``SHELLS``)."""
    template = {"bash": _BASH, "zsh": _ZSH}[shell]
    names = (spec.program, *spec.aliases)
    prefix = "_" + re.sub(r"[^A-Za-z0-9]", "_", _safe(spec.program))
    replacements = {
        "@CASES@": _spec_case(spec, zsh=shell == "zsh"),
        "@NAMES_LIST@": " ".join(_safe(n) for n in names),
        "@NAMES@": f"{spec.program} (and {', '.join(spec.aliases)})"
        if spec.aliases
        else spec.program,
        "@HOW@": spec.how,
        "@PROG@": spec.program,
        "@P@": prefix,
    }
    text = template
    for key, value in replacements.items():
        text = text.replace(key, value)
    return text


# -- The answers to __complete ---------------------------------------------------------------

Provider = Callable[[list[str]], Iterable[str]]


def serve(
    argv: list[str], providers: Mapping[str, Provider], quiet: tuple[type[Exception], ...]
) -> int:
    """Answer ``__complete <what> -- <words>``: the values, one a line, and exit 0; on an
    error of ``quiet`` (the host's state cannot be read), nothing and exit 1.

    Only printable values are given: a line is one value, and none can hold a newline.
    """
    if len(argv) < 2 or argv[1] != "--" or argv[0] not in providers:
        return 1
    try:
        values = list(providers[argv[0]](argv[2:]))
    except quiet:
        return 1
    sys.stdout.write("".join(f"{v}\n" for v in values if v and v.isprintable()))
    return 0


def option_value(words: list[str], name: str) -> str | None:
    """The value of option ``name`` among the words of a command line as typed
    (``--conf-dir=~/kcm``, ``--conf-dir '/tmp/a b'``), unquoted and with ``~`` and
    ``$VARIABLES`` expanded as the shell would; ``None`` when it is not there."""
    for i, word in enumerate(words):
        if word.startswith(name + "="):
            return _unquoted(word[len(name) + 1 :])
        if word == name and i + 1 < len(words):
            return _unquoted(words[i + 1])
    return None


def _unquoted(word: str) -> str:
    try:
        parts = shlex.split(word)
    except ValueError:  # an unclosed quote: the word is still being typed
        parts = shlex.split(word + ("'" if word.count("'") % 2 else '"'))
    text = parts[0] if len(parts) == 1 else word
    return os.path.expandvars(os.path.expanduser(text))


def pool_names(conf_dir: str) -> list[str]:
    """The pools of the state directory ``conf_dir`` for completion, quickly and without
    the lock: each directory under ``pools/`` with a valid name and an ``exclusive`` file.

    Nothing is opened but directories (a FIFO planted as a file cannot block), symbolic
    links are never followed, and a state that cannot be listed has no pools.
    """
    import stat

    from kcm.errors import UsageError
    from kcm.state import validate_pool_name

    names = []
    with os.scandir(os.path.join(conf_dir, "pools")) as entries:
        for entry in entries:
            if not entry.is_dir(follow_symlinks=False):
                continue
            try:
                validate_pool_name(entry.name)
                mode = os.lstat(os.path.join(entry.path, "exclusive")).st_mode
            except (UsageError, OSError):
                continue
            if stat.S_ISREG(mode):
                names.append(entry.name)
    return sorted(names)


def kcm_values(argv: list[str]) -> int:
    """``kcm __complete pools -- <words>``: the pools of the line's --conf-dir (or /etc/kcm)."""

    def pools(words: list[str]) -> list[str]:
        return pool_names(option_value(words, "--conf-dir") or "/etc/kcm")

    return serve(argv, {"pools": pools}, (OSError, UnicodeError))

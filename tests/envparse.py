"""What a Nomad task gets from a ``template { env = true }`` block, for the snippet's tests.

Ports of the code Nomad runs, no Go needed (paths in their repositories):

- ``go_json_string``: Go's encoding/json string encoding, which consul-template's
  ``toJSON`` is (template/funcs.go, json.Marshal: ``<``, ``>``, ``&`` as ``\u003c``...);
- ``parse``: hashicorp/go-envparse v0.1.0 (envparse.go), which Nomad calls on an
  env template's output (client/allocrunner/taskrunner/template/template.go
  loadTemplateEnv), with bufio.ScanLines splitting the lines.
"""

from __future__ import annotations

# Go unicode.IsSpace (what bytes.TrimSpace trims)
_GO_SPACE = set("\t\n\v\f\r \u0085\u00a0\u1680\u2028\u2029\u202f\u205f\u3000") | {
    chr(c) for c in range(0x2000, 0x200B)
}


def go_trim_space(b: bytes) -> bytes:
    s = b.decode("utf-8", errors="surrogateescape")
    i, j = 0, len(s)
    while i < j and s[i] in _GO_SPACE:
        i += 1
    while j > i and s[j - 1] in _GO_SPACE:
        j -= 1
    return s[i:j].encode("utf-8", errors="surrogateescape")


def go_json_string(s: str, escape_html: bool = True) -> str:
    """json.Marshal of a Go string (consul-template's toJSON with escape_html)."""
    out = ['"']
    for ch in s:
        c = ord(ch)
        if c < 0x80:
            if ch in '\\"':
                out.append("\\" + ch)
            elif ch == "\b":
                out.append("\\b")
            elif ch == "\f":
                out.append("\\f")
            elif ch == "\n":
                out.append("\\n")
            elif ch == "\r":
                out.append("\\r")
            elif ch == "\t":
                out.append("\\t")
            elif c < 0x20 or (escape_html and ch in "<>&"):
                out.append(f"\\u00{c:02x}")
            else:
                out.append(ch)
        elif ch in "\u2028\u2029":  # escaped unconditionally
            out.append(f"\\u{c:04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


class EnvParseError(Exception):
    pass


def _h2r(buf: bytes) -> int:
    if len(buf) < 4:
        raise EnvParseError("incomplete hex sequence")
    r = 0
    for d in buf[:4]:
        ch = chr(d)
        if ch not in "0123456789abcdefABCDEF":
            raise EnvParseError(f"invalid hex character: {ch!r}")
        r = r * 16 + int(ch, 16)
    return r


def parse_line(ln: bytes) -> tuple[bytes, bytes]:
    ln = go_trim_space(ln)
    if len(ln) == 0 or ln[0:1] == b"#":
        return b"", b""
    parts = ln.split(b"=", 1)
    if len(parts) != 2:
        raise EnvParseError("missing =")
    key, value = go_trim_space(parts[0]), go_trim_space(parts[1])
    if len(key) > len(b"export ") and key.startswith(b"export "):
        key = key[len(b"export ") :]
    if len(key) == 0:
        raise EnvParseError("empty key")
    k0 = key[0]
    if k0 < ord("A") or (ord("Z") < k0 < ord("a") and k0 != ord("_")) or k0 > ord("z"):
        raise EnvParseError("key must start with [A-Za-z_]")
    for v in key[1:]:
        if not (chr(v) in "_./" or (chr(v).isascii() and chr(v).isalnum())):
            raise EnvParseError("key characters must be [A-Za-z0-9/_.]")
    if len(value) == 0:
        return key, value
    newv = bytearray()
    last_sig = 0
    mode = "normal"
    i = 0
    while i < len(value):
        v = value[i]
        if v < 32:
            raise EnvParseError(f"0x{v:02x} is an invalid value character")
        if v > 127:
            if mode == "escape":
                raise EnvParseError("multibyte characters disallowed in escape sequences")
            last_sig = len(newv)  # (sic: set before the append, as in Go)
            newv.append(v)
            i += 1
            continue
        ch = chr(v)
        if mode == "normal":
            if ch == '"':
                mode = "double"
            elif ch == "'":
                mode = "single"
            elif ch == "#":
                return key, bytes(newv[:last_sig])
            elif ch in " \t":
                newv.append(v)
            else:
                newv.append(v)
                last_sig = len(newv)
        elif mode == "double":
            if ch == '"':
                mode = "normal"
            elif ch == "\\":
                mode = "escape"
            else:
                newv.append(v)
                last_sig = len(newv)
        elif mode == "escape":
            simple = {
                '"': b'"',
                "\\": b"\\",
                "/": b"/",
                "b": b"\b",
                "f": b"\f",
                "r": b"\r",
                "n": b"\n",
                "t": b"\t",
            }
            if ch in simple:
                newv += simple[ch]
            elif ch == "u":
                r = _h2r(value[i + 1 :])
                i += 4
                if 0xD800 <= r < 0xE000:  # utf16.IsSurrogate
                    if len(value) < i + 6:
                        raise EnvParseError("incomplete Unicode surrogate pair")
                    if value[i + 1 : i + 3] != b"\\u":
                        raise EnvParseError("incomplete Unicode surrogate pair")
                    r2 = _h2r(value[i + 3 :])
                    i += 6
                    if 0xD800 <= r < 0xDC00 and 0xDC00 <= r2 < 0xE000:
                        r = 0x10000 + ((r - 0xD800) << 10) + (r2 - 0xDC00)
                    else:
                        r = 0xFFFD
                newv += chr(r).encode("utf-8")
            else:
                raise EnvParseError(f"invalid escape sequence: {ch!r}")
            last_sig = len(newv)
            mode = "double"
        elif mode == "single":
            if ch == "'":
                mode = "normal"
            else:
                newv.append(v)
                last_sig = len(newv)
        i += 1
    if mode == "normal":
        return key, bytes(newv)
    raise EnvParseError(
        {"double": 'unmatched "', "single": "unmatched '", "escape": "incomplete escape sequence"}[
            mode
        ]
    )


def scan_lines(data: bytes) -> list[bytes]:
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return [ln[:-1] if ln.endswith(b"\r") else ln for ln in lines]


def parse(data: bytes) -> dict[str, str]:
    """The environment variables go-envparse reads from an env template's output."""
    env: dict[str, str] = {}
    for n, ln in enumerate(scan_lines(data), 1):
        if len(ln) > 64 * 1024:
            raise EnvParseError(f"line {n}: bufio.Scanner: token too long")
        k, v = parse_line(ln)
        if len(k) > 0:  # v0.1.0 keeps empty values (HEAD's Next() drops them)
            env[k.decode()] = v.decode("utf-8", errors="surrogateescape")
    return env

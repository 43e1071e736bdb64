# Flatten one JSON document into lines "PATH<TAB>VALUE", one per string, number, true,
# false or null, in document order. PATH joins object keys and array indexes with "/":
#   {"hostname": "vm1", "public_keys": {"k1": "ssh-ed25519 AAAA..."}, "keys": [{"type": "ssh"}]}
# gives
#   hostname<TAB>vm1
#   public_keys/k1<TAB>ssh-ed25519 AAAA...
#   keys/0/type<TAB>ssh
# Strings are unescaped (\uXXXX to UTF-8); a control character (newline, tab, ...) inside a key
# or value becomes a space, so every value is exactly one line and a value can never smuggle a
# second line into a file it is written to (an authorized_keys entry, say). Empty objects and
# arrays print nothing. Invalid JSON prints "json: <reason>" on stderr and exits 1 (what was
# printed before is then not to be trusted: callers check the status).
#
# Why awk: the tiny guest has busybox and no Python; this is busybox awk compatible
# (no gawk extensions). Used by /etc/haven/cloud.sh on meta_data.json.
{ text = text $0 "\n" }

END {
    pos = 1
    len = length(text)
    err = ""
    value("")
    skip()
    if (err == "" && pos <= len) err = "trailing data at offset " pos
    if (err != "") {
        print "json: " err > "/dev/stderr"
        exit 1
    }
}

function skip(    c) {
    while (pos <= len) {
        c = substr(text, pos, 1)
        if (c != " " && c != "\t" && c != "\n" && c != "\r") break
        pos++
    }
}

function fail(why) {
    if (err == "") err = why " at offset " pos
    pos = len + 1
}

function join(path, key) {
    return path == "" ? key : path "/" key
}

function value(path,    c, rest, s) {
    skip()
    if (err != "") return
    if (pos > len) { fail("unexpected end"); return }
    c = substr(text, pos, 1)
    if (c == "{") { object(path); return }
    if (c == "[") { array(path); return }
    if (c == "\"") { s = string(); if (err == "") print path "\t" s; return }
    rest = substr(text, pos, 5)
    if (rest == "false") { pos += 5; print path "\tfalse"; return }
    rest = substr(rest, 1, 4)
    if (rest == "true" || rest == "null") { pos += 4; print path "\t" rest; return }
    if (match(substr(text, pos, 64), /^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?/)) {
        print path "\t" substr(text, pos, RLENGTH)
        pos += RLENGTH
        return
    }
    fail("unexpected character '" c "'")
}

function object(path,    key, c) {
    pos++
    skip()
    if (substr(text, pos, 1) == "}") { pos++; return }
    while (err == "") {
        skip()
        if (substr(text, pos, 1) != "\"") { fail("object key expected"); return }
        key = string()
        skip()
        if (substr(text, pos, 1) != ":") { fail("':' expected"); return }
        pos++
        value(join(path, key))
        skip()
        c = substr(text, pos, 1)
        pos++
        if (c == "}") return
        if (c != ",") { pos--; fail("',' or '}' expected"); return }
    }
}

function array(path,    i, c) {
    pos++
    skip()
    if (substr(text, pos, 1) == "]") { pos++; return }
    for (i = 0; err == ""; i++) {
        value(join(path, i))
        skip()
        c = substr(text, pos, 1)
        pos++
        if (c == "]") return
        if (c != ",") { pos--; fail("',' or ']' expected"); return }
    }
}

# The string starting at pos (its opening quote), unescaped; pos ends after the closing quote.
function string(    out, c, e, code, low) {
    out = ""
    pos++
    while (1) {
        if (pos > len) { fail("unterminated string"); return "" }
        if (match(substr(text, pos, 256), /^[^"\\\001-\037]+/)) {
            out = out substr(text, pos, RLENGTH)
            pos += RLENGTH
            continue
        }
        c = substr(text, pos, 1)
        pos++
        if (c == "\"") return out
        if (c != "\\") { fail("control character in string"); return "" }
        e = substr(text, pos, 1)
        pos++
        if (e == "\"" || e == "\\" || e == "/") out = out e
        else if (e == "b" || e == "f" || e == "n" || e == "r" || e == "t") out = out " "
        else if (e == "u") {
            code = hex4()
            if (code >= 55296 && code < 56320 && substr(text, pos, 2) == "\\u") {
                low = substr(text, pos + 2, 4)
                # A high surrogate and the low one after it make one character.
                if (tolower(low) ~ /^d[c-f][0-9a-f][0-9a-f]$/) {
                    pos += 2
                    code = 65536 + (code - 55296) * 1024 + (hex4() - 56320)
                }
            }
            # A surrogate left unpaired is no character: U+FFFD, as a UTF-8 decoder would.
            if (code >= 55296 && code < 57344) code = 65533
            out = out utf8(code)
        } else { fail("bad escape"); return "" }
        if (err != "") return ""
    }
}

function hex4(    i, d, n) {
    n = 0
    for (i = 0; i < 4; i++) {
        d = index("0123456789abcdef", tolower(substr(text, pos + i, 1)))
        if (d == 0) { fail("bad \\u escape"); return 0 }
        n = n * 16 + d - 1
    }
    pos += 4
    return n
}

function utf8(code) {
    if (code < 32) return " "
    if (code < 128) return sprintf("%c", code)
    if (code < 2048) return sprintf("%c%c", 192 + int(code / 64), 128 + code % 64)
    if (code < 65536)
        return sprintf("%c%c%c", 224 + int(code / 4096), 128 + int(code / 64) % 64, 128 + code % 64)
    return sprintf("%c%c%c%c", 240 + int(code / 262144), 128 + int(code / 4096) % 64,
                   128 + int(code / 64) % 64, 128 + code % 64)
}

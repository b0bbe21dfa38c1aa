#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Derive a small vocabulary fixture from a vocab-only GGUF and its test texts.

A byte-level BPE tokenizer only ever forms symbols that are substrings of the
piece being merged, and every piece is a substring of the text.  So the
tokens whose bytes occur in the test texts, the merges among them (in their
original order, which is all their ranks mean), every token that is not a
normal one, and the 256 alphabet characters tokenize those texts exactly as
the whole vocabulary does, for any pre-tokenizer split.  Ids are kept: a gap
is filled by the test when it builds the vocabulary.

usage: scripts/derive-vocab.py VOCAB.gguf TEXTS.inp [MORE.inp...] > FIXTURE.vocab

The output is text, one record a line:
    key VALUE                  metadata (model, pre, bos, eos, ...)
    t ID TYPE TEXT             a token
    m LEFT RIGHT               a merge, in rank order
TEXT, LEFT and RIGHT escape backslash, space, control bytes and bytes that
are not UTF-8 as \\\\, \\s, \\n, \\r, \\t and \\xHH.
"""
import struct
import sys

SEP = b'\n__ggml_vocab_test__\n'


class Reader:
    def __init__(self, data):
        self.d = data
        self.p = 0

    def take(self, fmt):
        v = struct.unpack_from('<' + fmt, self.d, self.p)
        self.p += struct.calcsize('<' + fmt)
        return v[0]

    def string(self):
        n = self.take('Q')
        s = self.d[self.p:self.p + n]
        self.p += n
        return s

    SCALAR = {0: 'B', 1: 'b', 2: 'H', 3: 'h', 4: 'I', 5: 'i', 6: 'f', 7: '?',
              10: 'Q', 11: 'q', 12: 'd'}

    def value(self, t):
        if t == 8:
            return self.string()
        if t == 9:
            et = self.take('I')
            n = self.take('Q')
            return [self.value(et) for _ in range(n)]
        return self.take(self.SCALAR[t])


def read_meta(path):
    with open(path, 'rb') as f:
        r = Reader(f.read())
    if r.d[:4] != b'GGUF':
        sys.exit('%s: not a GGUF file' % path)
    r.p = 4
    version = r.take('I')
    if version < 2:
        sys.exit('%s: GGUF version %d is too old' % (path, version))
    r.take('Q')
    n_kv = r.take('Q')
    meta = {}
    for _ in range(n_kv):
        key = r.string().decode()
        meta[key] = r.value(r.take('I'))
    return meta


def gpt2_alphabet():
    out = {}
    nxt = 256
    for b in range(256):
        printable = 0x21 <= b <= 0x7e or 0xa1 <= b <= 0xac or b >= 0xae
        if printable:
            out[chr(b)] = b
        else:
            out[chr(nxt)] = b
            nxt += 1
    return out


def token_bytes(tok, alpha):
    """Bytes a normal byte-level token stands for, or None if not of the alphabet."""
    try:
        s = tok.decode('utf-8')
    except UnicodeDecodeError:
        return None
    out = bytearray()
    for ch in s:
        if ch not in alpha:
            return None
        out.append(alpha[ch])
    return bytes(out)


def escape(b):
    try:
        s = b.decode('utf-8')
    except UnicodeDecodeError:
        return ''.join(chr(c) if 0x21 <= c <= 0x7e and c != 0x5c else '\\x%02x' % c for c in b)
    out = []
    for ch in s:
        o = ord(ch)
        if ch == '\\':
            out.append('\\\\')
        elif ch == ' ':
            out.append('\\s')
        elif ch == '\n':
            out.append('\\n')
        elif ch == '\r':
            out.append('\\r')
        elif ch == '\t':
            out.append('\\t')
        elif o < 0x20 or o == 0x7f:
            out.append('\\x%02x' % o)
        else:
            out.append(ch)
    return ''.join(out)


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    meta = read_meta(sys.argv[1])
    texts = []
    for p in sys.argv[2:]:
        with open(p, 'rb') as f:
            texts.extend(t for t in f.read().split(SEP) if t)
    model = meta['tokenizer.ggml.model'].decode()
    if model != 'gpt2':
        sys.exit('%s: tokenizer.ggml.model is %s: only byte-level BPE (gpt2) is derived'
                 % (sys.argv[1], model))
    toks = meta['tokenizer.ggml.tokens']
    types = meta.get('tokenizer.ggml.token_type', [1] * len(toks))
    merges = meta.get('tokenizer.ggml.merges', [])
    alpha = gpt2_alphabet()
    alpha_tokens = {ch.encode() for ch in alpha}
    joined = b'\x00'.join(texts)

    keep = set()
    for i, t in enumerate(toks):
        if types[i] != 1 or t in alpha_tokens:
            keep.add(i)
            continue
        b = token_bytes(t, alpha)
        if b is not None and b in joined:
            keep.add(i)
    kept_text = {toks[i] for i in keep}

    out = sys.stdout
    out.write('# Derived by scripts/derive-vocab.py from %s\n' % sys.argv[1].split('/')[-1])
    out.write('# and its test texts: the tokens and merges that can act on them.\n')
    out.write('model %s\n' % model)
    if 'tokenizer.ggml.pre' in meta:
        out.write('pre %s\n' % meta['tokenizer.ggml.pre'].decode())
    if 'general.architecture' in meta:
        out.write('arch %s\n' % meta['general.architecture'].decode())
    out.write('n_vocab %d\n' % len(toks))
    for key in ('bos_token_id', 'eos_token_id', 'eot_token_id', 'eom_token_id',
                'unknown_token_id', 'add_bos_token'):
        if 'tokenizer.ggml.' + key in meta:
            out.write('%s %d\n' % (key, int(meta['tokenizer.ggml.' + key])))
    for i in sorted(keep):
        out.write('t %d %d %s\n' % (i, types[i], escape(toks[i])))
    n_merges = 0
    for m in merges:
        at = m.find(b' ', 1)
        if at < 0:
            continue
        left, right = m[:at], m[at + 1:]
        if left in kept_text and right in kept_text and left + right in kept_text:
            out.write('m %s %s\n' % (escape(left), escape(right)))
            n_merges += 1
    sys.stderr.write('%s: %d of %d tokens, %d of %d merges\n'
                     % (sys.argv[1], len(keep), len(toks), n_merges, len(merges)))


if __name__ == '__main__':
    main()

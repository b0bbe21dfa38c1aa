#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""A slow, plain reference for byte-level BPE: the model's own pre-tokenizer
regexes through Python's `regex` module, then a quadratic merge loop.

It shares no code with libmoe, so where it and libmoe agree on many texts
the splits in libmoe/text/pretok.c do what the regexes say.

usage: scripts/ref-tokenize.py VOCAB.gguf PRE TEXTS.inp > TEXTS.out
       scripts/ref-tokenize.py --split PRE TEXTS.inp      (piece lengths in code
                                                           points, one text a line)
       scripts/ref-tokenize.py --random N SEED > TEXTS.inp (texts of mixed scripts)
PRE is a tokenizer.ggml.pre value; needs python3-regex.
"""
import importlib.util
import os
import random
import sys

import regex

SEP = '\n__ggml_vocab_test__\n'

GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
GPT4O = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
         r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+"
         r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}|"
         r" ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
CONTR = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
LLAMA3 = (CONTR + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
          r"\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN35 = (CONTR + r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|"
          r"\s*[\r\n]+|\s+(?!\S)|\s+")
KIMI_K2 = '|'.join([
    r"[\p{Han}]+",
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*"
    r"[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+"
    r"[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"\p{N}{1,3}",
    r" ?[^\s\p{L}\p{N}]+[\r\n]*",
    r"\s*[\r\n]+",
    r"\s+(?!\S)",
    r"\s+",
])
# DeepSeek LLM's letter class, as code point ranges of the regex in its tokenizer.json.
DSL_RANGES = [
    (0x0041, 0x005a), (0x0061, 0x007a), (0x00b5, 0x00b5), (0x00c0, 0x00d6), (0x00d8, 0x00f6),
    (0x00f8, 0x01ba), (0x01bc, 0x01bf), (0x01c4, 0x0293), (0x0295, 0x02af), (0x0370, 0x0373),
    (0x0376, 0x0377), (0x037b, 0x037d), (0x037f, 0x037f), (0x0386, 0x0386), (0x0388, 0x038a),
    (0x038c, 0x038c), (0x038e, 0x03a1), (0x03a3, 0x03f5), (0x03f7, 0x0481), (0x048a, 0x052f),
    (0x0531, 0x0556), (0x10a0, 0x10c5), (0x13a0, 0x13f5), (0x13f8, 0x13fd), (0x1c90, 0x1cba),
    (0x1cbd, 0x1cbf), (0x1d00, 0x1d2b), (0x1d6b, 0x1d77), (0x1d79, 0x1d9a), (0x1e00, 0x1f15),
    (0x1f18, 0x1f1d), (0x1f20, 0x1f45), (0x1f48, 0x1f4d), (0x1f50, 0x1f57), (0x1f59, 0x1f59),
    (0x1f5b, 0x1f5b), (0x1f5d, 0x1f5d), (0x1f5f, 0x1f7d), (0x1f80, 0x1fb4), (0x1fb6, 0x1fbc),
    (0x1fbe, 0x1fbe), (0x1fc2, 0x1fc4), (0x1fc6, 0x1fcc), (0x1fd0, 0x1fd3), (0x1fd6, 0x1fdb),
    (0x1fe0, 0x1fec), (0x1ff2, 0x1ff4), (0x1ff6, 0x1ffc), (0x2102, 0x2102), (0x2107, 0x2107),
    (0x210a, 0x2113), (0x2115, 0x2115), (0x2119, 0x211d), (0x2124, 0x2124), (0x2126, 0x2126),
    (0x2128, 0x2128), (0x212a, 0x212d), (0x212f, 0x2134), (0x2139, 0x2139), (0x213c, 0x213f),
    (0x2145, 0x2149), (0x214e, 0x214e), (0x2183, 0x2184), (0x2c00, 0x2c7b), (0x2c7e, 0x2ce4),
    (0x2ceb, 0x2cee), (0x2cf2, 0x2cf3), (0xa640, 0xa66d), (0xa680, 0xa69b), (0xa722, 0xa76f),
    (0xa771, 0xa787), (0xa78b, 0xa78e), (0xab70, 0xabbf), (0xfb00, 0xfb06), (0xfb13, 0xfb17),
    (0xff21, 0xff3a), (0xff41, 0xff5a), (0x10400, 0x1044f), (0x104b0, 0x104d3),
    (0x104d8, 0x104fb), (0x10c80, 0x10cb2), (0x10cc0, 0x10cf2), (0x118a0, 0x118df),
    (0x1e900, 0x1e943),
]
DSL_LETTERS = ''.join('%s-%s' % (chr(lo), chr(hi)) for lo, hi in DSL_RANGES)

# Each family: a list of regexes, applied in turn as "Isolated" splits.
SPLITS = {
    'gpt-2': [GPT2], 'default': [GPT2],
    'gpt-4o': [GPT4O], 'llama4': [GPT4O],
    'llama-bpe': [LLAMA3], 'llama3': [LLAMA3], 'glm4': [LLAMA3],
    'qwen2': [LLAMA3.replace(r'\p{N}{1,3}', r'\p{N}')],
    'qwen35': [QWEN35],
    'kimi-k2': [KIMI_K2],
    'deepseek-llm': [r"[\r\n]", r"\s?[" + DSL_LETTERS + r"]+", r"\s?[!-/:-~！-／：-～‘-‟　-。]+",
                     r"\s+$", r"[一-龥ࠀ-一가-퟿]+", r"\p{N}+"],
    'deepseek-coder': [r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", r"[一-龥ࠀ-一가-퟿]+", r"\p{N}"],
    'deepseek-v3': [r"\p{N}{1,3}", r"[一-龥぀-ゟ゠-ヿ]+",
                    r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|"
                    r"[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|"
                    r"\s*[\r\n]+|\s+(?!\S)|\s+"],
}
# Characters for random texts: ASCII, apostrophes and contraction letters,
# every kind of space and line break, letters of each case class, marks,
# numbers of each kind, CJK, kana, Hangul, Han outside the CJK blocks,
# punctuation and symbols, emoji and modifiers, format and private-use ones.
POOL = (list("aAzZ'sStTdDmMlLrReEvV0123456789 \t\n\r!\"#$%&()*+,-./:;<=>?@[\\]^_`{|}~") +
        list('\u00e9\u00c9\u0301\u0303\u0915\u093f\u094d\u4e2d\u6587\u3042\u30a2\u3000'
             '\u3001\u3002\uac00\u1100\u00a0\u2003\u2028\u0085\u200b\u200d\u00bd\u0661'
             '\u2160\u017f\u01c5\u02b0\u0391\u03b1\u0416\u0436\U0001f600\U0001f44d'
             '\U0001f3fd\u00ad\uff01\uff21\uff41\u2018\u201c\u2014\u2026\u00b5\U00020000'
             '\u2e80\u3005\u0800\u0e01\u10d0\u0531\U0001d518\u00ff\u1f00\u2102\ufb01'
             '\u2c00\ua640\U00010400\uff10\u0660\u00b2\x01\x7f\u0600\ue000'))
# tiktoken vocabularies take a piece that is a token whole.
WHOLE = {'llama-bpe', 'llama3', 'kimi-k2'}


def split(pre, text):
    pieces = [text]
    for rx in SPLITS[pre]:
        # V1 for Kimi's class intersections (&&); it would read DeepSeek's ranges as set operators.
        r = regex.compile(rx, regex.V1 if '&&' in rx else regex.V0)
        out = []
        for p in pieces:
            at = 0
            for m in r.finditer(p):
                if m.start() > at:
                    out.append(p[at:m.start()])
                out.append(m.group())
                at = m.end()
            if at < len(p):
                out.append(p[at:])
        pieces = out
    return pieces


def alphabet():
    enc = {}
    nxt = 256
    for b in range(256):
        if 0x21 <= b <= 0x7e or 0xa1 <= b <= 0xac or b >= 0xae:
            enc[b] = chr(b)
        else:
            enc[b] = chr(nxt)
            nxt += 1
    return enc


def bpe(word, ranks, ids, whole):
    if whole and word in ids:
        return [ids[word]]
    syms = list(word)
    while len(syms) > 1:
        best = None
        for i in range(len(syms) - 1):
            r = ranks.get((syms[i], syms[i + 1]))
            if r is not None and (best is None or r < best[0]):
                best = (r, i)
        if best is None:
            break
        i = best[1]
        syms[i:i + 2] = [syms[i] + syms[i + 1]]
    return [ids[s] for s in syms]


def main():
    args = sys.argv[1:]
    if len(args) == 3 and args[0] == '--split':
        pre, inp = args[1], args[2]
        with open(inp, encoding='utf-8', newline='') as f:
            for t in f.read().split(SEP)[:-1]:
                print(' '.join(str(len(p)) for p in split(pre, t)))
        return
    if len(args) == 3 and args[0] == '--random':
        rng = random.Random(int(args[2]))
        out = []
        for _ in range(int(args[1])):
            out.append(''.join(rng.choice(POOL) for _ in range(rng.randint(0, 24))))
        sys.stdout.write(''.join(t + SEP for t in out))
        return
    if len(args) != 3:
        sys.exit(__doc__)
    gguf, pre, inp = args
    pre = pre or 'default'
    here = os.path.dirname(os.path.abspath(__file__))
    spec = importlib.util.spec_from_file_location('dv', os.path.join(here, 'derive-vocab.py'))
    dv = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dv)
    meta = dv.read_meta(gguf)
    toks = [t.decode('utf-8', 'surrogateescape') for t in meta['tokenizer.ggml.tokens']]
    types = meta.get('tokenizer.ggml.token_type', [1] * len(toks))
    ids = {}
    for i, t in enumerate(toks):
        ids.setdefault(t, i)
    ranks = {}
    for r, m in enumerate(meta['tokenizer.ggml.merges']):
        m = m.decode('utf-8', 'surrogateescape')
        at = m.find(' ', 1)
        pair = (m[:at], m[at + 1:])
        if pair[0] + pair[1] in ids:
            ranks.setdefault(pair, r)
    user = sorted((t for i, t in enumerate(toks) if types[i] == 4 and t), key=len, reverse=True)
    enc = alphabet()
    with open(inp, encoding='utf-8', newline='') as f:
        texts = f.read().split(SEP)[:-1]
    for t in texts:
        out = []
        frags = [t]
        for u in user:
            nf = []
            for fr in frags:
                if isinstance(fr, int):
                    nf.append(fr)
                    continue
                parts = fr.split(u)
                for k, p in enumerate(parts):
                    if k:
                        nf.append(ids[u])
                    if p:
                        nf.append(p)
            frags = nf
        for fr in frags:
            if isinstance(fr, int):
                out.append(fr)
                continue
            for piece in split(pre, fr):
                word = ''.join(enc[b] for b in piece.encode('utf-8'))
                out.extend(bpe(word, ranks, ids, pre in WHOLE))
        print(' '.join(map(str, out)))


if __name__ == '__main__':
    main()

#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Write a vocab-only GGUF from a Hugging Face byte-level BPE tokenizer.json.

The tokens, merges and added tokens become tokenizer.ggml.* as llama.cpp's
converter writes them: added tokens marked special are control tokens (3),
the other added tokens user-defined (4), ids without a token "[PADn]" unused
(5).  Only what a tokenizer needs is written; there are no tensors.

usage: scripts/hf-vocab-to-gguf.py tokenizer.json PRE OUT.gguf [KEY=VALUE...]
KEY=VALUE adds metadata: an integer value for *_id keys, a boolean for add_*
keys (tokenizer.ggml. is put before a key without a dot), a string otherwise;
general.architecture=NAME replaces the default "llama".
"""
import json
import struct
import sys


def gguf_str(s):
    b = s.encode('utf-8') if isinstance(s, str) else s
    return struct.pack('<Q', len(b)) + b


def kv_str(key, val):
    return gguf_str(key) + struct.pack('<I', 8) + gguf_str(val)


def kv_u32(key, val):
    return gguf_str(key) + struct.pack('<II', 4, val)


def kv_bool(key, val):
    return gguf_str(key) + struct.pack('<IB', 7, 1 if val else 0)


def kv_arr_str(key, vals):
    out = [gguf_str(key), struct.pack('<IIQ', 9, 8, len(vals))]
    out.extend(gguf_str(v) for v in vals)
    return b''.join(out)


def kv_arr_i32(key, vals):
    return gguf_str(key) + struct.pack('<IIQ', 9, 5, len(vals)) + struct.pack(
        '<%di' % len(vals), *vals)


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    with open(sys.argv[1], encoding='utf-8') as f:
        tj = json.load(f)
    pre, out_path = sys.argv[2], sys.argv[3]
    model = tj['model']
    if model.get('type') != 'BPE':
        sys.exit('%s: model type %s is not BPE' % (sys.argv[1], model.get('type')))
    by_id = {}
    types = {}
    for text, i in model['vocab'].items():
        by_id[i] = text
        types[i] = 1
    for at in tj.get('added_tokens', []):
        by_id[at['id']] = at['content']
        types[at['id']] = 3 if at.get('special') else 4
    n = max(by_id) + 1
    tokens = [by_id.get(i, '[PAD%d]' % i) for i in range(n)]
    ttypes = [types.get(i, 5) for i in range(n)]
    merges = [m if isinstance(m, str) else ' '.join(m) for m in model['merges']]

    extra = dict(a.partition('=')[::2] for a in sys.argv[4:])
    kvs = [
        kv_str('general.architecture', extra.pop('general.architecture', 'llama')),
        kv_str('tokenizer.ggml.model', 'gpt2'),
        kv_str('tokenizer.ggml.pre', pre),
        kv_arr_str('tokenizer.ggml.tokens', tokens),
        kv_arr_i32('tokenizer.ggml.token_type', ttypes),
        kv_arr_str('tokenizer.ggml.merges', merges),
    ]
    for key, val in extra.items():
        if '.' not in key:
            key = 'tokenizer.ggml.' + key
        short = key.rsplit('.', 1)[1]
        if short.startswith('add_'):
            kvs.append(kv_bool(key, val not in ('0', 'false')))
        elif short.endswith('_id'):
            kvs.append(kv_u32(key, int(val)))
        else:
            kvs.append(kv_str(key, val))
    with open(out_path, 'wb') as f:
        f.write(b'GGUF' + struct.pack('<IQQ', 3, 0, len(kvs)))
        for kv in kvs:
            f.write(kv)
    sys.stderr.write('%s: %d tokens, %d merges, pre %s\n' % (out_path, n, len(merges), pre))


if __name__ == '__main__':
    main()

#!/bin/sh
# A man page from a tool's page in Documentation/tools: scripts/man.sh RST OUT.
# The page's NAME section ("tool - what it does") becomes the subtitle and
# section 1 of the manual is declared, which is how rst2man fills the man
# page's NAME line and header; Sphinx's :doc: references become the page's name.
set -eu
rst=$1 out=$2
awk '
	NR <= 3 { print; next }
	state == 0 && $0 == "NAME" { state = 1; next }
	state == 1 && /^=+$/ { next }
	state == 1 && /^$/ { next }
	state == 1 {
		sub(/^[^ ]+ - /, "")
		bar = $0; gsub(/./, "-", bar)
		print bar; print $0; print bar; print ""
		print ":Manual section: 1"; print ":Manual group: moe"; print ""
		state = 2; next
	}
	{ print }
' "$rst" | sed -e 's/:doc:`\([^`]*\)`/``\1``/g' | rst2man --halt=warning - "$out.tmp"
mv "$out.tmp" "$out"

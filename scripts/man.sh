#!/bin/sh
# Man pages from the tools' pages in Documentation/tools.
#
#   scripts/man.sh RST OUT             the page of a tool (moectl.1, moe-run.1, ...)
#   scripts/man.sh RST OUT COMMAND     moectl-COMMAND.1: one command of moectl.rst
#   scripts/man.sh --commands RST      the commands moectl.rst describes, one a line
#
# A tool's page: its NAME section ("tool - what it does") becomes the
# subtitle and section 1 of the manual is declared, which is how rst2man
# fills the man page's NAME line and header; Sphinx's :doc: references become
# the page's name.  A command's page, as bpftool-prog(8) is to bpftool(8):
# the SYNOPSIS lines of moectl.rst that start with "moectl COMMAND", the
# entries of its DESCRIPTION whose term starts with COMMAND, its EXIT STATUS,
# and the one-line summary of the command table in tools/moectl/main.c, so
# that moectl.rst stays the one source of every page.
set -eu

# The terms of the DESCRIPTION's definition list: "info", "trace simulate", ...
commands() {
	awk '
		/^DESCRIPTION$/ { d = 1; next }
		d && /^[A-Z][A-Z ]+$/ { exit }
		d && prev ~ /^[a-z][a-z-]*( [a-z-]+)?$/ && /^   [^ ]/ { split(prev, w, " "); print w[1] }
		{ prev = $0 }
	' "$1" | uniq
}

if [ "${1:-}" = --commands ]; then
	commands "$2"
	exit 0
fi
rst=$1 out=$2 cmd=${3:-}
src=$(dirname "$0")/..
if [ -n "$cmd" ] && ! commands "$rst" | grep -qx "$cmd"; then
	echo "man.sh: $rst describes no command '$cmd' (it has: $(commands "$rst" | tr '\n' ' '))" >&2
	exit 1
fi

if [ -z "$cmd" ]; then
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
	' "$rst"
else
	# the table's help column: "status [--watch]           moe.ko's models ..."
	what=$(awk -v c="$cmd" '
		index($0, "{ \"" c "\", do_") {
			s = $0; sub(/^[^"]*"[^"]*", [a-z_]+, "/, "", s); sub(/" },.*$/, "", s)
			n = split(s, part, /   +/); print part[n]; exit
		}' "$src/tools/moectl/main.c")
	[ -n "$what" ] || what="the moectl $cmd command"
	awk -v c="$cmd" -v what="$what" '
		function title(s,   bar) { bar = s; gsub(/./, "=", bar); print s; print bar; print "" }
		/^SYNOPSIS$/ || /^DESCRIPTION$/ || /^EXIT STATUS$/ || /^[A-Z][A-Z ]+$/ {
			sec = $0; next
		}
		/^=+$/ { next }
		sec == "SYNOPSIS" {
			if ($0 ~ "^   moectl " c "( |$)") { syn = syn $0 "\n"; cont = 1 }
			else if ($0 ~ /^   moectl / || $0 !~ /^    /) cont = 0
			else if (cont) syn = syn $0 "\n"
			next
		}
		sec == "DESCRIPTION" {
			if ($0 ~ "^" c "( [a-z-]+)?$") { desc = desc $0 "\n"; in_c = 1; next }
			if ($0 ~ /^[^ ]/) in_c = 0
			if (in_c) desc = desc $0 "\n"
			next
		}
		sec == "EXIT STATUS" { exit_st = exit_st $0 "\n"; next }
		END {
			page = "moectl-" c; bar = page; gsub(/./, "=", bar)
			print bar; print page; print bar; print ""
			sub_ = what; bar = sub_; gsub(/./, "-", bar)
			print bar; print sub_; print bar; print ""
			print ":Manual section: 1"; print ":Manual group: moe"; print ""
			title("SYNOPSIS"); print "::"; print ""; printf "%s\n", syn
			title("DESCRIPTION"); printf "%s\n", desc
			print "``--json`` and ``--pretty`` stand anywhere on the line and switch the"
			print "output to one JSON document (indented with ``--pretty``), as for every"
			print "moectl command; ``moectl " c " --help`` lists the options."
			print ""
			title("EXIT STATUS"); printf "%s", exit_st
			title("SEE ALSO")
			print "moectl(1)" (c == "bench" ? ", moe-bench(1)" : "") \
			      (c == "status" || c == "load" || c == "unload" ? ", moe-run(1)" : "")
		}
	' "$rst"
fi | sed -e 's/:doc:`\([^`]*\)`/``\1``/g' | rst2man --halt=warning - "$out.tmp"
mv "$out.tmp" "$out"

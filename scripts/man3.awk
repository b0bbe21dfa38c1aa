# SPDX-License-Identifier: MIT
# man3.awk: one section-3 man page per public function of include/moe/moe.h.
#
#   awk -v outdir=DIR -v version=1.0.0 -f scripts/man3.awk include/moe/moe.h
#
# The page of a function is made of its declaration (SYNOPSIS) and the
# comment right above it, which may cover several declarations in a row
# (DESCRIPTION) up to a blank line; a function without one gets the overview comment of its
# section of the header.  The header's conventions (errno returns,
# moe_errmsg) become RETURN VALUE, and the other functions of the section
# SEE ALSO.  Fails when a function has neither comment nor section overview.

function flush_comment_line(s) {
	sub(/[ \t]*\*+\/[ \t]*$/, "", s)
	sub(/^[ \t]*\/?\*+[ \t]?/, "", s)
	return s
}
function roff(s) {
	gsub(/\\/, "\\\\e", s)
	if (s ~ /^[.']/)
		s = "\\&" s
	return s
}
BEGIN { in_c = 0; cmt = ""; section = "general"; want_overview = 0; n = 0 }
{
	line = $0
}
in_c {
	text = flush_comment_line(line)
	cbuf = cbuf (cbuf == "" ? "" : "\n") text
	if (line ~ /\*\//) {
		in_c = 0
		if (cbuf ~ /^\(section: /) {
			section = cbuf
			sub(/^\(section: /, "", section)
			sub(/\).*/, "", section)
			want_overview = 1
			cmt = ""
		} else if (want_overview) {
			overview[section] = cbuf
			want_overview = 0
			cmt = cbuf
		} else {
			cmt = cbuf
		}
	}
	next
}
/^[ \t]*\/\*/ {
	if (line ~ /^\/\* -+ /) { next }
	cbuf = ""
	if (line ~ /\*\//) {
		cbuf = flush_comment_line(line)
		if (cbuf ~ /^\(section: /) {
			section = cbuf
			sub(/^\(section: /, "", section)
			sub(/\).*/, "", section)
			want_overview = 1
			cmt = ""
		} else {
			if (want_overview) {
				overview[section] = cbuf
				want_overview = 0
			}
			cmt = cbuf
		}
		next
	}
	in_c = 1
	cbuf = flush_comment_line(line)
	next
}
/^MOE_API[ \t]/ {
	decl = line
	while (decl !~ /;[ \t]*$/ && (getline more) > 0) {
		sub(/^[ \t]+/, " ", more)
		decl = decl more
	}
	sub(/^MOE_API[ \t]+/, "", decl)
	name = decl
	sub(/\(.*/, "", name)
	sub(/.*[^A-Za-z0-9_]/, "", name)
	n++
	fname[n] = name
	fdecl[n] = decl
	fdoc[n] = cmt
	fsect[n] = section
	next
}
/^[ \t]*$/ { cmt = ""; next }
/^#/ { next }
{ cmt = "" }
END {
	bad = 0
	for (i = 1; i <= n; i++) {
		doc = fdoc[i]
		if (doc == "")
			doc = overview[fsect[i]]
		if (doc == "") {
			printf("man3.awk: %s has no comment and its section %s no overview\n",
			       fname[i], fsect[i]) > "/dev/stderr"
			bad = 1
			continue
		}
		f = outdir "/" fname[i] ".3"
		printf(".TH %s 3 \"\" \"libmoe %s\" \"libmoe Manual\"\n", fname[i], version) > f
		first = doc
		gsub(/\n/, " ", first)
		sub(/\.(  .*| [A-Z].*|$)/, "", first)
		if (length(first) > 72)
			first = substr(first, 1, 69) "..."
		printf(".SH NAME\n%s \\- %s\n", fname[i], roff(first)) > f
		printf(".SH SYNOPSIS\n.nf\n.B #include <moe/moe.h>\n.PP\n%s\n.fi\n",
		       roff(fdecl[i])) > f
		printf(".SH DESCRIPTION\n.nf\n") > f
		m = split(doc, lines, "\n")
		for (j = 1; j <= m; j++)
			printf("%s\n", roff(lines[j])) > f
		printf(".fi\n") > f
		printf(".SH RETURN VALUE\nCalls that return int return 0 (or a count) on success and a negative\n") > f
		printf("errno on failure, as described above, and never set errno.\n") > f
		printf(".BR moe_errmsg (3)\ngives the reason for the last failure on the calling thread.\n") > f
		printf(".SH SEE ALSO\n") > f
		sep = ""
		for (k = 1; k <= n; k++) {
			if (k == i || fsect[k] != fsect[i])
				continue
			printf("%s.BR %s (3)", sep, fname[k]) > f
			sep = ",\n"
		}
		printf("%s\nThe libmoe documentation, Documentation/api.rst.\n", sep == "" ? "" : ",") > f
		close(f)
	}
	exit bad
}

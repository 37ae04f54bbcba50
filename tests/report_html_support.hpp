// Checks a report page with Python's html.parser (/usr/bin/python3): tag
// balance, duplicate ids, resources outside the page, and the embedded images,
// tables and preformatted text, returned as JSON for the test to compare.
#pragma once

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "cli_test_support.hpp"

namespace scaffold_test {

inline constexpr const char* kPython = "/usr/bin/python3";

inline bool python_available() { return ::access(kPython, X_OK) == 0; }

// Prints one JSON object:
//   errors:  unbalanced or stray tags, duplicate ids, resources outside the page
//   tags:    every tag name used
//   images:  [{alt, media_type, sha256, polylines, width, height}] of every <img>, from its
//            base64 data (polylines: the number of <polyline elements in an SVG)
//   tables:  {id: [[cell text, ...] per row]} of every <table> with an id
//   texts:   {id: text} of every <pre> with an id, character references decoded
//   doctype: the <!DOCTYPE> declaration
inline constexpr const char* kHtmlCheckScript = R"py(
import base64, hashlib, html.parser, json, sys

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}

class Checker(html.parser.HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack, self.errors, self.tags, self.images = [], [], set(), []
        self.ids, self.tables, self.texts, self.doctype = set(), {}, {}, ""
        self.table, self.cell, self.pre = None, None, None

    def handle_decl(self, decl):
        self.doctype = decl

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.add(tag)
        if tag not in VOID:
            self.stack.append(tag)

        element_id = attrs.get("id")
        if element_id is not None:
            if element_id in self.ids:
                self.errors.append("duplicate id " + element_id)
            self.ids.add(element_id)
        for name in ("src", "href", "action", "poster", "srcset"):
            value = attrs.get(name)
            if value is not None and not value.startswith(("data:", "#")):
                self.errors.append("resource outside the page: %s=%s" % (name, value[:80]))
        if "style" in attrs and "url(" in attrs["style"]:
            self.errors.append("style attribute loads a url: " + attrs["style"][:80])

        if tag == "img":
            src = attrs.get("src", "")
            header, _, payload = src.partition(",")
            data = base64.b64decode(payload, validate=True) if header.endswith(";base64") else b""
            self.images.append({"alt": attrs.get("alt", ""), "media_type": header[5:].split(";")[0],
                                "sha256": hashlib.sha256(data).hexdigest(), "polylines": data.count(b"<polyline"),
                                "width": attrs.get("width", ""), "height": attrs.get("height", "")})

        if tag == "table" and element_id is not None:
            self.table = element_id
            self.tables[element_id] = []
        if tag == "tr" and self.table is not None:
            self.tables[self.table].append([])
        if tag in ("td", "th") and self.table is not None:
            self.cell = ""
        if tag == "pre" and element_id is not None:
            self.pre = element_id
            self.texts[element_id] = ""

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in VOID:
            self.handle_endtag(tag)

    def handle_endtag(self, tag):
        if tag in VOID:
            self.errors.append("end tag of void element " + tag)
            return
        if not self.stack or self.stack[-1] != tag:
            open_tag = self.stack[-1] if self.stack else "nothing"
            self.errors.append("end tag %s does not close the open %s" % (tag, open_tag))
            return
        self.stack.pop()
        if tag in ("td", "th") and self.cell is not None:
            self.tables[self.table][-1].append(self.cell.strip())
            self.cell = None
        if tag == "table":
            self.table = None
        if tag == "pre":
            self.pre = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell += data
        if self.pre is not None:
            self.texts[self.pre] += data

checker = Checker()
with open(sys.argv[1], encoding="utf-8") as page:
    checker.feed(page.read())
checker.close()
if checker.stack:
    checker.errors.append("unclosed tags at the end: " + " ".join(checker.stack))
print(json.dumps({"errors": checker.errors, "tags": sorted(checker.tags), "images": checker.images,
                  "tables": checker.tables, "texts": checker.texts, "doctype": checker.doctype}))
)py";

// Runs the checker on `page`; fails the test (and returns null) when Python fails.
inline nlohmann::json check_html(const std::filesystem::path& page, const std::filesystem::path& work_dir) {
  const std::filesystem::path script = work_dir / "html_check.py";
  std::ofstream(script) << kHtmlCheckScript;
  const CommandResult result =
      run_in(work_dir, std::string(kPython) + " '" + script.string() + "' '" + page.string() + "'");
  EXPECT_EQ(result.exit_code, 0) << result.output;
  if (result.exit_code != 0) return nullptr;
  return nlohmann::json::parse(result.output);
}

}  // namespace scaffold_test

"""What ingester.language costs per article, and how much of the text it needs to read.

    .venv/bin/python bench/language_bench.py [--pages N]

Extracts the pages of ../shared/pages/trafilatura-eval/ once, then times the detector (process CPU) on
the first SAMPLE_CHARS characters of each text against longer samples, in this one process, and counts
how often each sample size gives the answer of the longest one. Also prints how often the page's
declared language is overruled, and how many pages declare none.
"""

from __future__ import annotations

import argparse
import gzip
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trafilatura

from bench.ingest_bench import page_files, quiet
from ingester import language
from ingester.extract import _page_meta, extract_sync
from ingester.safehttp import decode_html

SIZES = (300, language.SAMPLE_CHARS, 2000, 5000, 20000)


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    args.add_argument("--pages", type=int, default=None, help="how many pages (default: all 990)")
    quiet()
    texts, declared = [], []
    for file in page_files(args.parse_args().pages):
        html = decode_html(gzip.decompress(file.read_bytes()), "text/html")
        extracted = extract_sync(html, "https://example.com/")
        if extracted is not None and len(extracted.text) >= language.MIN_CHARS:
            texts.append(extracted.text)
            declared.append(_page_meta(trafilatura.load_html(html), "https://example.com/")[0])
    identifier = language._identifier()
    reference = [identifier.rank(t[:SIZES[-1]])[0][0] for t in texts]
    print(f"{len(texts)} texts of {language.MIN_CHARS}+ characters")
    for size in SIZES:
        started = time.process_time()
        answers = [identifier.rank(t[:size])[0][0] for t in texts]
        elapsed = time.process_time() - started
        same = sum(a == r for a, r in zip(answers, reference, strict=True))
        mark = "  <- ingester" if size == language.SAMPLE_CHARS else ""
        print(f"  first {size:6d} chars: {elapsed / len(texts) * 1000:6.3f} ms per text, "
              f"same answer as {SIZES[-1]} chars on {same}{mark}")
    short = [identifier.rank(t[:language.UNDECLARED_MIN_CHARS])[0] for t in texts]
    sure = [(best, ref) for (best, p), ref in zip(short, reference, strict=True) if p >= language.CONFIDENCE]
    print(f"  first {language.UNDECLARED_MIN_CHARS} chars (an undeclared short text): confident on "
          f"{len(sure)}, of which {sum(b != r for b, r in sure)} differ from the {SIZES[-1]}-char answer")
    started = time.process_time()
    resolved = [language.resolve(t, d) for t, d in zip(texts, declared, strict=True)]
    elapsed = time.process_time() - started
    pairs = list(zip(declared, resolved, strict=True))
    overruled = sum(1 for d, r in pairs if d and d != r)
    undeclared = [r for d, r in pairs if not d]
    print(f"resolve(): {elapsed / len(texts) * 1000:.3f} ms per text; {len(pairs) - len(undeclared)} pages "
          f"declare a language, {overruled} overruled by their text; {len(undeclared)} declare none, "
          f"{sum(r is not None for r in undeclared)} of those detected")

if __name__ == "__main__":
    main()

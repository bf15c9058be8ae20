"""The slow, readable twin of :func:`dipengine.catalog.build_catalog`: one case at a time,
straight from the rules of dip-rules §2-§4 (tests/test_catalog.py holds the two equal)."""
from __future__ import annotations

import math

from dipengine.catalog import (CHAPTERS, CLASS_LETTER, CLASS_NAMES, DEFAULT_WEIGHTS, PROC_CLASS_RANK, _chapter_of,
                               _enough, catalog_options, subtypes)
from dipengine.rules import is_complete_proc, parse_age_band

def reference_catalog(history: list, levels: dict, proc_class: dict, *, cci, severity,
                      weights=DEFAULT_WEIGHTS, threshold=15, comprehensive_threshold=None, scale=1000,
                      trim=(0.025, 0.975), min_trim_group=25, related_min_gain=0.2, basic_share=0.5, basic_cv=0.7,
                      aux_min_cases=15, aux_min_diff=0.1, diagnostic_as_conservative=False, options=None) -> dict:
    """Pure-Python twin of the catalogue build, one case at a time, straight from the rules.

    Parameters
    ----------
    history : list of list of dict
        Per year (oldest first) the groupable cases as dicts of the normalised columns.
    levels : dict
        hospital_id -> level.
    proc_class : dict
        procedure code -> ``diagnostic``/``therapeutic``/``surgery`` (every code used).
    cci, severity : tuple
        As returned by :func:`load_prefix_table`.
    comprehensive_threshold, options
        As for :func:`dipengine.catalog.build_catalog` (default: ``threshold``; the default options).

    Returns
    -------
    dict
        ``groups``: dip_code -> dict(group_type, treat_class, score, avg_cost_fen, n_cases);
        ``aux``: (dip_code, subtype) -> coefficient; ``budget_point_value`` (yuan per point);
        ``same_level``: (dip_code, level) -> avg cost fen.
    """
    ny = len(history)
    total_w = sum(weights)
    w = [x / total_w for x in weights]
    min_rank = 2 if diagnostic_as_conservative else 1
    comp_threshold = threshold if comprehensive_threshold is None else comprehensive_threshold
    opts = catalog_options(options)
    cuts = opts["cci_levels"]
    bands = [parse_age_band(b) for b in opts["age_bands"]]

    def age_key(age, days):  # as the grouper: days under one year when known, else 365 × years
        if age is None or age < 0:
            return None
        if age == 0:
            return days if days is not None and days >= 0 else None
        return 365 * age

    def longest(code, prefixes):
        code = code.split("+")[0]
        best = -1
        for i, p in enumerate(prefixes):
            if code.startswith(p) and (best < 0 or len(p) > len(prefixes[best])):
                best = i
        return best

    def weighted_count(per_year):
        return sum(w[y] * per_year[y] for y in range(ny))

    def weighted_mean(costs_by_year):
        num = den = 0.0
        for y in range(ny):
            if costs_by_year[y]:
                num += w[y] * (sum(costs_by_year[y]) / len(costs_by_year[y]))
                den += w[y]
        return num / den if den else float("nan")

    cases = []
    for y, rows in enumerate(history):
        for r in rows:
            seq = ([r["main_proc"]] if r.get("main_proc") else []) + list(r.get("other_procs") or [])
            seq = [c for c in seq if PROC_CLASS_RANK[proc_class[c]] >= min_rank]
            main = seq[0] if seq else None
            related = None
            for c in seq[1:]:
                if PROC_CLASS_RANK[proc_class[c]] >= 2 and c != main:
                    related = c
                    break
            cls = max([PROC_CLASS_RANK[proc_class[c]] for c in seq], default=0)
            sev = 0
            cat_weight: dict = {}
            for d in r.get("other_dx") or []:
                i = longest(d, severity[0])
                if i >= 0:
                    sev = max(sev, 3 if severity[1][i] == "III" else 2)
                j = longest(d, cci[0])
                if j >= 0:
                    cat_weight[cci[2][j]] = max(cat_weight.get(cci[2][j], 0), cci[1][j])
            if r.get("los") is None or r["los"] < opts["severity_min_los"]:
                sev = 0
            score_cci = sum(cat_weight.values())
            cci_level = sum(score_cci >= cut for cut in cuts)
            case_subtypes = set()
            if r.get("discharge_mode") == opts["death_discharge_mode"]:
                case_subtypes.add("death")
            if sev:
                case_subtypes.add("severity_III" if sev == 3 else "severity_II")
            if cci_level:
                case_subtypes.add(f"cci_{cci_level}")
            key = age_key(r.get("age"), r.get("age_days"))
            for band, lo, hi in bands:  # a case counts for every band it is in
                if key is not None and lo <= key <= hi:
                    case_subtypes.add(band)
            sub = r["main_dx"].split("+")[0][:5]
            cases.append(dict(year=y, sub=sub, main=main, related=related, cls=cls, cost=r["total_cost_fen"],
                              level=levels.get(r["hospital_id"], 0), subtypes=case_subtypes))

    # pairs (main + related) that change cost materially
    by_base: dict = {}
    for c in cases:
        by_base.setdefault((c["sub"], c["main"]), []).append(c)
    chosen_pairs = set()
    for (sub, main), members in by_base.items():
        for rel in {c["related"] for c in members if c["related"]}:
            pair = [[] for _ in range(ny)]
            rest = [[] for _ in range(ny)]
            for c in members:
                (pair if c["related"] == rel else rest)[c["year"]].append(c["cost"])
            if not is_complete_proc(rel) or not _enough(weighted_count([len(x) for x in pair]), threshold) \
                    or not any(rest):
                continue
            if abs(weighted_mean(pair) / weighted_mean(rest) - 1) >= related_min_gain:
                chosen_pairs.add((sub, main, rel))
    # A+B and B+A are one expression: keep the pair with more weighted cases (ties: main code first)
    for sub, main, rel in sorted(chosen_pairs, key=lambda k: (k[0], k[1], k[2])):
        if (sub, rel, main) in chosen_pairs and (sub, main, rel) in chosen_pairs:
            def nw(m, r):
                return round(weighted_count([sum(1 for c in by_base[(sub, m)] if c["related"] == r and c["year"] == y)
                                             for y in range(ny)]), 9)
            loser = (sub, rel, main) if (-nw(main, rel), main) < (-nw(rel, main), rel) else (sub, main, rel)
            chosen_pairs.discard(loser)

    def combo(c):
        rel = c["related"] if (c["sub"], c["main"], c["related"]) in chosen_pairs else None
        return (c["sub"], c["main"], rel)

    def count_by(cs, key):
        out: dict = {}
        for c in cs:
            out.setdefault(key(c), [0] * ny)[c["year"]] += 1
        return out

    # a prefix code ("47.01") never keys a core group (rule sets match whole codes)
    core = {k for k, n in count_by(cases, combo).items()
            if _enough(weighted_count(n), threshold) and (k[1] is None or is_complete_proc(k[1]))}
    rest = [c for c in cases if combo(c) not in core]
    comp = {k for k, n in count_by(rest, lambda c: (c["sub"][:3], c["cls"])).items()
            if _enough(weighted_count(n), comp_threshold)}
    rest = [c for c in rest if (c["sub"][:3], c["cls"]) not in comp]

    def chapter(c):
        i = _chapter_of(c["sub"][:3])
        return None if i < 0 else (CHAPTERS[i], c["cls"])

    ranges = {k for k, n in count_by(rest, chapter).items() if k is not None and _enough(weighted_count(n), comp_threshold)}

    groups: dict = {}
    for c in cases:
        k = combo(c)
        if k in core:
            sub, main, rel = k
            if main is None:
                code, tclass = f"{sub}-C", 0
            else:
                code = f"{sub}-{main}" + (f"+{rel}" if rel else "")
                tclass = max(PROC_CLASS_RANK[proc_class[main]], PROC_CLASS_RANK[proc_class[rel]] if rel else 0)
            gtype = "core"
        elif (c["sub"][:3], c["cls"]) in comp:
            code, tclass, gtype = f"{c['sub'][:3]}-{CLASS_LETTER[c['cls']]}", c["cls"], "comprehensive"
        elif chapter(c) in ranges:
            (a, b), t = chapter(c)
            code, tclass, gtype = f"{a}-{b}-{CLASS_LETTER[t]}", t, "comprehensive"
        else:
            code, tclass, gtype = "BLANK", 0, "blank"
        g = groups.setdefault(code, dict(group_type=gtype, treat_class=CLASS_NAMES[tclass], cases=[]))
        g["cases"].append(c)
    groups.setdefault("BLANK", dict(group_type="blank", treat_class="conservative", cases=[]))

    # trimming per group and year
    for g in groups.values():
        g["kept"] = []
        for y in range(ny):
            ys = sorted((c for c in g["cases"] if c["year"] == y), key=lambda c: c["cost"])
            n = len(ys)
            if trim is not None and n >= min_trim_group:
                lo = math.floor(n * trim[0] + 1e-9)
                hi = math.floor(n * (1 - trim[1]) + 1e-9)
                ys = ys[lo:n - hi]
            g["kept"].extend(ys)

    M = 0.0
    for y in range(ny):
        kept = [c["cost"] for g in groups.values() for c in g["kept"] if c["year"] == y]
        M += w[y] * sum(kept) / len(kept)
    for code, g in groups.items():
        by_year = [[c["cost"] for c in g["kept"] if c["year"] == y] for y in range(ny)]
        n_w = weighted_count([sum(1 for c in g["cases"] if c["year"] == y) for y in range(ny)])
        m = weighted_mean(by_year)
        if code == "BLANK" and not _enough(n_w, comp_threshold):
            m = M
        g.update(avg=m, n_w=n_w, score=round(m / M * scale, 4), n_cases=len(g["cases"]))
        if g["group_type"] == "core":
            share = sum(w[c["year"]] for c in g["cases"] if c["level"] == 1) / n_w
            num = den = 0.0
            for y in range(ny):
                xs = by_year[y]
                if xs:
                    mean = sum(xs) / len(xs)
                    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / len(xs))
                    num += w[y] * sd / mean
                    den += w[y]
            if share >= basic_share and num / den <= basic_cv:
                g["group_type"] = "basic"

    aux = {}
    for code, g in groups.items():
        if g["group_type"] not in ("core", "basic"):
            continue
        for st in subtypes(opts):
            sub_by_year = [[c["cost"] for c in g["cases"] if c["year"] == y and st in c["subtypes"]] for y in range(ny)]
            if not _enough(weighted_count([len(x) for x in sub_by_year]), aux_min_cases):
                continue
            base = [[c["cost"] for c in g["cases"] if c["year"] == y] if sub_by_year[y] else [] for y in range(ny)]
            coef = weighted_mean(sub_by_year) / weighted_mean(base)
            if abs(coef - 1) >= aux_min_diff:
                aux[(code, st)] = round(coef, 4)

    total = sum(w[y] * sum(c["cost"] for c in cases if c["year"] == y) for y in range(ny)) / 100.0
    points = sum(g["score"] * g["n_w"] for g in groups.values())
    same_level = {}
    for code, g in groups.items():
        for lvl in (1, 2, 3):
            xs = [c["cost"] for c in g["kept"] if c["year"] == ny - 1 and c["level"] == lvl]
            if xs:
                same_level[(code, lvl)] = (2 * sum(xs) + len(xs)) // (2 * len(xs))
    return {
        "groups": {code: dict(group_type=g["group_type"], treat_class=g["treat_class"], score=g["score"],
                              avg_cost_fen=math.floor(g["avg"] + 0.5), n_cases=g["n_cases"])
                   for code, g in groups.items()},
        "aux": aux,
        "budget_point_value": total / points,
        "same_level": same_level,
    }

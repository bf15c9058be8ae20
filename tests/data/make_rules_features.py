"""Make the feature rule-set fixture: ``python tests/data/make_rules_features.py [OUT_DIR]``.

Writes ``tests/data/rules_features/`` by default: a small hand-made DIP catalogue over
well-known ICD-10 医保版 / ICD-9-CM-3 医保版 codes, with every kind of group (core, basic,
comprehensive by category, by shorter prefix and by range, one blank group) and every optional
table, extended with the diagnoses and procedures of the synthetic generator's vocabulary
(``dipengine/data/dx_vocab.csv``, ``proc_vocab.csv``) when present. Scores are
avg_cost / 8,000 yuan x 1,000. It is a test fixture (the tests rely on its specific groups), not
a real catalogue; the shipped ``grouper_rules/demo`` is built from synthetic history by
``scripts/make_shipped_tables.py`` with ``dipengine catalog build``.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a source checkout
from dipengine.rules import write_rule_set  # noqa: E402

MEAN_COST = 8000.0  # yuan, the notional regional mean behind the scores

# subcategory, name, conservative cost (None = no conservative group), [(proc_expr, class, cost)], basic?
DIAGNOSES = [
    ("K35.8", "急性阑尾炎", 5200, [("47.0100", "surgery", 10400), ("47.0900", "surgery", 9100)], True),
    ("K35.3", "急性阑尾炎伴局限性腹膜炎", 6100, [("47.0100", "surgery", 11800), ("47.0900", "surgery", 10500)], False),
    ("K80.1", "胆囊结石伴胆囊炎", 6800, [("51.2300", "surgery", 15800), ("51.2200", "surgery", 17900),
                                       ("51.2300+51.8800/51.1000", "surgery", 24600)], False),
    ("K80.2", "胆囊结石不伴胆囊炎", 4800, [("51.2300", "surgery", 14200)], True),
    ("K80.5", "胆管结石", 9000, [("51.8800", "surgery", 21000), ("51.1000", "diagnostic", 12800)], False),
    ("K40.9", "单侧腹股沟疝", 3900, [("53.0000/53.0100/53.0200", "surgery", 8900), ("17.1100", "surgery", 12500)], True),
    ("K29.7", "胃炎", 3600, [("45.1300", "diagnostic", 4700), ("45.1600", "diagnostic", 5300)], True),
    ("K92.2", "胃肠出血", 7400, [("44.4300", "surgery", 13900), ("45.1300", "diagnostic", 8600)], False),
    ("K56.7", "肠梗阻", 8200, [("45.6200", "surgery", 31000)], False),
    ("K85.9", "急性胰腺炎", 12500, [], False),
    ("K74.6", "肝硬化", 10800, [("42.3300", "surgery", 16500)], False),
    ("I63.9", "脑梗死", 11200, [("99.1000", "therapeutic", 18500), ("39.7400", "surgery", 78000)], False),
    ("I63.5", "脑动脉闭塞脑梗死", 12400, [("39.7400", "surgery", 82000)], False),
    ("I61.9", "脑出血", 19500, [("01.3900", "surgery", 62000)], False),
    ("G45.9", "短暂性脑缺血发作", 6200, [], True),
    ("I21.0", "前壁急性心肌梗死", 14800, [("00.6600+36.0700", "surgery", 52000), ("88.5700", "diagnostic", 21000)], False),
    ("I20.0", "不稳定型心绞痛", 8400, [("00.6600+36.0700", "surgery", 42000), ("88.5600/88.5700", "diagnostic", 12600)], False),
    ("I25.1", "动脉粥样硬化性心脏病", 7600, [("88.5700", "diagnostic", 11800), ("00.6600+36.0700", "surgery", 40500)], False),
    ("I48.x", "心房颤动", 8100, [("37.3400", "surgery", 68000)], False),
    ("I50.9", "心力衰竭", 9800, [], False),
    ("I10.x", "原发性高血压", 5100, [], True),
    ("J18.9", "肺炎", 6900, [("33.2400", "diagnostic", 11200), ("96.0400", "therapeutic", 28000)], True),
    ("J44.1", "慢性阻塞性肺病伴急性加重", 9300, [("93.9000", "therapeutic", 13800)], False),
    ("J45.9", "哮喘", 5600, [], True),
    ("J20.9", "急性支气管炎", 3800, [], True),
    ("E11.9", "2型糖尿病", 6300, [], True),
    ("E11.2", "2型糖尿病伴肾并发症", 8800, [("39.9500", "therapeutic", 21000)], False),
    ("N20.0", "肾结石", 5400, [("98.5100", "therapeutic", 9800), ("55.0400", "surgery", 26000)], False),
    ("N20.1", "输尿管结石", 5000, [("56.0x00", "surgery", 16800), ("98.5100", "therapeutic", 9200)], False),
    ("N39.0", "泌尿道感染", 4900, [], True),
    ("N40.x", "前列腺增生", 5800, [("60.2900", "surgery", 17600)], False),
    ("C34.1", "上叶支气管或肺恶性肿瘤", 13800, [("32.4100", "surgery", 62000), ("99.2500", "therapeutic", 11200),
                                            ("33.2400", "diagnostic", 16800)], False),
    ("C50.9", "乳房恶性肿瘤", 9400, [("85.4300/85.4500", "surgery", 36000), ("99.2500", "therapeutic", 8800)], False),
    ("C18.7", "乙状结肠恶性肿瘤", 12600, [("45.7600", "surgery", 68000), ("99.2500", "therapeutic", 9600)], False),
    ("C16.9", "胃恶性肿瘤", 13200, [("43.7x00", "surgery", 78000), ("99.2500", "therapeutic", 9900)], False),
    ("S72.0", "股骨颈骨折", 11600, [("81.5100", "surgery", 58000), ("79.3500", "surgery", 42000)], False),
    ("S82.8", "小腿其他部位骨折", 7800, [("79.3600", "surgery", 36000)], False),
    ("S06.0", "脑震荡", 4300, [], True),
    ("M17.9", "膝关节病", 6100, [("81.5400", "surgery", 62000), ("80.8600", "surgery", 18000)], False),
    ("M51.2", "腰椎间盘移位", 7100, [("80.5100", "surgery", 42000), ("81.0800+80.5100", "surgery", 76000)], False),
    ("H25.9", "老年性白内障", None, [("13.4100+13.7000/13.7100", "surgery", 7600), ("13.4100", "surgery", 5200)], True),
    ("H26.9", "白内障", None, [("13.4100+13.7000/13.7100", "surgery", 7900)], False),
    ("D25.9", "子宫平滑肌瘤", 5200, [("68.4100", "surgery", 23000), ("68.2900", "surgery", 15500)], False),
    ("O80.0", "单胎顺产", 3900, [("73.5900", "therapeutic", 4600)], True),
    ("O34.2", "瘢痕子宫妊娠", 6800, [("74.1x00", "surgery", 9800)], False),
    ("A09.9", "胃肠炎", 3200, [], True),
    ("A41.9", "脓毒症", 18600, [], False),
    ("L03.1", "四肢蜂窝织炎", 4800, [("86.0400", "surgery", 7600)], True),
]

# category / prefix / range comprehensive groups: (dx_key, name, {class: cost})
COMPREHENSIVE = [
    ("K35", "阑尾炎综合", {"conservative": 5000, "surgery": 11000}),
    ("K80", "胆石症综合", {"conservative": 6500, "diagnostic": 9800, "therapeutic": 11500, "surgery": 19000}),
    ("K8", "胆胰疾病综合", {"conservative": 8800, "surgery": 24000}),
    ("K", "消化系统其他", {"conservative": 6000, "diagnostic": 7800, "therapeutic": 9500, "surgery": 22000}),
    ("I63", "脑梗死综合", {"conservative": 11000, "therapeutic": 19000, "surgery": 70000}),
    ("I", "循环系统其他", {"conservative": 8500, "diagnostic": 12000, "therapeutic": 15000, "surgery": 45000}),
    ("J", "呼吸系统其他", {"conservative": 6800, "diagnostic": 10500, "therapeutic": 16000, "surgery": 38000}),
    ("C34", "肺恶性肿瘤综合", {"conservative": 12800, "therapeutic": 11000, "surgery": 60000}),
    ("N", "泌尿生殖其他", {"conservative": 5200, "therapeutic": 9000, "surgery": 18000}),
    ("A00-B99", "感染性疾病", {"conservative": 5800, "therapeutic": 9000, "surgery": 21000}),
    ("C00-D48", "肿瘤", {"conservative": 11500, "diagnostic": 13000, "therapeutic": 10500, "surgery": 52000}),
    ("S00-T98", "损伤中毒", {"conservative": 6200, "therapeutic": 9000, "surgery": 35000}),
    ("M00-M99", "肌肉骨骼", {"conservative": 6400, "surgery": 40000}),
    ("E00-E90", "内分泌代谢", {"conservative": 6500, "therapeutic": 12000}),
    ("H00-H59", "眼", {"surgery": 6500}),
    ("O00-O99", "妊娠分娩", {"conservative": 4200, "therapeutic": 4800, "surgery": 9800}),
]

PROCEDURES = {  # code -> (class, level); the rest follow codes.proc_class_heuristic
    "47.0100": ("surgery", 2), "47.0900": ("surgery", 2), "51.2300": ("surgery", 3), "51.2200": ("surgery", 3),
    "51.8800": ("surgery", 3), "51.1000": ("diagnostic", 2), "53.0000": ("surgery", 2), "53.0100": ("surgery", 2),
    "53.0200": ("surgery", 2), "17.1100": ("surgery", 3), "45.1300": ("diagnostic", 1), "45.1600": ("diagnostic", 2),
    "44.4300": ("surgery", 3), "45.6200": ("surgery", 4), "42.3300": ("surgery", 3), "99.1000": ("therapeutic", 1),
    "39.7400": ("surgery", 4), "01.3900": ("surgery", 4), "00.6600": ("surgery", 3), "36.0700": ("surgery", 3),
    "88.5600": ("diagnostic", 2), "88.5700": ("diagnostic", 2), "37.3400": ("surgery", 4), "33.2400": ("diagnostic", 2),
    "96.0400": ("therapeutic", 2), "93.9000": ("therapeutic", 1), "39.9500": ("therapeutic", 2),
    "98.5100": ("therapeutic", 2), "55.0400": ("surgery", 3), "56.0x00": ("surgery", 3), "60.2900": ("surgery", 3),
    "32.4100": ("surgery", 4), "99.2500": ("therapeutic", 1), "85.4300": ("surgery", 3), "85.4500": ("surgery", 3),
    "45.7600": ("surgery", 4), "43.7x00": ("surgery", 4), "81.5100": ("surgery", 4), "79.3500": ("surgery", 3),
    "79.3600": ("surgery", 3), "81.5400": ("surgery", 4), "80.8600": ("surgery", 2), "80.5100": ("surgery", 3),
    "81.0800": ("surgery", 4), "13.4100": ("surgery", 3), "13.7000": ("surgery", 3), "13.7100": ("surgery", 3),
    "68.4100": ("surgery", 3), "68.2900": ("surgery", 3), "73.5900": ("therapeutic", 1), "74.1x00": ("surgery", 2),
    "86.0400": ("surgery", 1), "87.4400": ("diagnostic", 1), "88.0100": ("diagnostic", 1),
    "89.5200": ("diagnostic", 1), "99.0400": ("therapeutic", 1), "93.9600": ("therapeutic", 1),
}

EXCLUDED_DX = ["K80.000", "Z00", "Z01", "Z51.1"]
EXCLUDED_PROC = ["89.5200", "99.0400", "93.9600"]

CCI = [  # dx_prefix, weight, category (dip-rules §3.1 item 1)
    ("I21", 1, "myocardial_infarction"), ("I22", 1, "myocardial_infarction"), ("I50", 1, "heart_failure"),
    ("I60", 1, "cerebrovascular"), ("I61", 1, "cerebrovascular"), ("I63", 1, "cerebrovascular"),
    ("G45", 1, "cerebrovascular"), ("J44", 1, "copd"), ("E11.9", 1, "diabetes"), ("E11.2", 2, "diabetes"),
    ("E11", 1, "diabetes"), ("G81", 2, "hemiplegia"), ("N18", 2, "renal"), ("C", 2, "malignancy"),
    ("K72", 3, "liver"), ("K74.6", 3, "liver"), ("C77", 6, "metastatic"), ("C78", 6, "metastatic"),
    ("C79", 6, "metastatic"), ("B20", 6, "aids"),
]

SEVERITY = [  # dx_prefix, level (dip-rules §3.1 item 2)
    ("A41", "III"), ("R57", "III"), ("J96", "III"), ("N17", "III"), ("K72.0", "III"), ("I46", "III"),
    ("J18", "II"), ("N39.0", "II"), ("E87", "II"), ("D62", "II"), ("J96.1", "II"),
]

AUX = {  # subtype -> coefficient, offered on groups below (placeholders, dip-rules §3.1)
    "death": 1.6, "severity_III": 1.5, "severity_II": 1.2, "cci_1": 1.1, "cci_2": 1.2, "cci_3": 1.3,
    "age_0_28d": 1.4, "age_29d_1y": 1.25, "age_1_6": 1.1, "age_80p": 1.15, "age_70_79": 1.05,
}


def synth_vocabulary():
    """Diagnoses and procedures of the synthetic generator (``dipengine/data/*_vocab.csv``), if present.

    Returns extra DIAGNOSES rows (subcategories not listed above: a conservative core group
    plus one core group per usual procedure) and extra PROCEDURES entries.
    """
    import csv

    data = Path(__file__).resolve().parents[2] / "dipengine" / "data"
    if not (data / "dx_vocab.csv").exists() or not (data / "proc_vocab.csv").exists():
        return [], {}
    with open(data / "proc_vocab.csv", encoding="utf-8") as f:
        procs = {r["code"]: (r["class"], int(r["level"] or 0), float(r["cost"] or 0)) for r in csv.DictReader(f)}
    known = {d[0] for d in DIAGNOSES}
    extra = {}
    with open(data / "dx_vocab.csv", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            sub = r["subcategory"]
            if sub in known or sub in extra:
                continue
            cost = float(r["cost"])
            plist = []
            for code in filter(None, (r.get("procs") or "").split("|")):
                if code in procs and procs[code][0] != "conservative":
                    plist.append((code, procs[code][0], round(cost + procs[code][2] * 3, -1)))
            extra[sub] = (sub, r["name"], cost, plist, False)
    return list(extra.values()), {c: (k, lv) for c, (k, lv, _cost) in procs.items()}


def build_tables() -> dict:
    groups = []
    extra_dx, extra_procs = synth_vocabulary()
    procedures = dict(extra_procs)
    procedures.update(PROCEDURES)

    def add(code, name, gtype, dx, expr, cls, cost):
        groups.append({"dip_code": code, "dip_name": name, "group_type": gtype, "dx_key": dx, "proc_expr": expr,
                       "treat_class": cls, "score": round(cost / MEAN_COST * 1000, 4), "avg_cost": float(cost),
                       "n_cases": 15 + (len(groups) * 37) % 400})

    for sub, name, cons, procs, basic in DIAGNOSES + extra_dx:
        if cons is not None:
            add(f"{sub}-C", f"{name}:保守治疗", "basic" if basic else "core", sub, "", "conservative", cons)
        for expr, cls, cost in procs:
            add(f"{sub}-{expr}", f"{name}:{expr}", "core", sub, expr, cls, cost)
    for dx, name, by_class in COMPREHENSIVE:
        for cls, cost in by_class.items():
            add(f"ZH-{dx}-{cls[0].upper()}", f"{name}({cls})", "comprehensive", dx, "", cls, cost)
    add("BLANK", "空白病组", "blank", "", "", "", MEAN_COST)

    aux = []
    for gi, grp in enumerate(groups):
        if grp["group_type"] == "blank" or gi % 3 == 2:
            continue
        for k, (st, coef) in enumerate(AUX.items()):
            if (gi + k) % 2 == 0 or st in ("death", "severity_III"):
                aux.append({"dip_code": grp["dip_code"], "subtype": st, "coefficient": coef})
    return {
        "groups.csv": groups,
        "procedures.csv": [{"code": c, "class": k, "level": lv} for c, (k, lv) in sorted(procedures.items())],
        "excluded_dx.csv": [{"code": c} for c in EXCLUDED_DX],
        "excluded_proc.csv": [{"code": c} for c in EXCLUDED_PROC],
        "aux_coefficients.csv": aux,
        "cci_weights.csv": [{"dx_prefix": p, "weight": w, "category": c} for p, w, c in CCI],
        "severity_dx.csv": [{"dx_prefix": p, "level": lv} for p, lv in SEVERITY],
    }


META = {
    "name": "features",
    "version": "2027.1",
    "scheme": "DIP-2.0-local",
    "effective_from": "2027-01-01",
    "effective_to": "2027-12-31",
    "source": "hand-made feature fixture (tests/data/make_rules_features.py); not a real region",
    "options": {"match_mode": "any_of", "cci_levels": [1, 3, 5], "severity_min_los": 3},
}


def main(out=None) -> Path:
    """Write the rule set to ``out`` (default ``tests/data/rules_features``), replacing it whole."""
    out = Path(out) if out else Path(__file__).resolve().parent / "rules_features"
    return write_rule_set(out, build_tables(), META)


if __name__ == "__main__":
    print(main(sys.argv[1] if len(sys.argv) > 1 else None))

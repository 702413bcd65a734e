#!/usr/bin/env python3
"""Generate the bilingual (zh/en) Varnolia Tech demo dataset.

Varnolia Tech / 沃萝科技 is a FICTIONAL company invented for this demo. The
script is deterministic (fixed seed) and writes, next to itself:

* facts.md                 - the fact sheet (F01..F35) + list of dirty rows
* varnolia_sft.jsonl       - chat-format training rows (+ deliberate dirty rows)
* varnolia_heldout.jsonl   - held-out paraphrased evaluation questions
* README.md                - short description, schemas and row counts

Run:  python src/onebox/data/demo/make_demo.py
"""

from __future__ import annotations

import json
import random
import re
import unicodedata
from pathlib import Path

SEED = 20240601
HERE = Path(__file__).resolve().parent
TRAIN_FILE = "varnolia_sft.jsonl"
HELDOUT_FILE = "varnolia_heldout.jsonl"

COMPANY_EN = "Varnolia Tech"
COMPANY_ZH = "沃萝科技"

SYSTEM_EN = (
    "You are the customer service assistant of Varnolia Tech (沃萝科技). Answer briefly and accurately."
)
SYSTEM_ZH = "你是沃萝科技（Varnolia Tech）的客服助手，请简洁准确地回答用户的问题。"
SYSTEM_RATE = 0.2  # fraction of training rows that get a system message

# --------------------------------------------------------------------------
# Facts
# --------------------------------------------------------------------------
# Each fact: canonical answer in both languages (the answer is ALWAYS exactly
# this string when the fact is taught alone), keywords for the held-out check,
# hand-written training questions, and one held-out paraphrase per language.

FACTS: list[dict] = []


def fact(fid, en, zh, kw_en, kw_zh, train_en, train_zh, held_en, held_zh, topic):
    FACTS.append(
        dict(
            id=fid,
            en=en,
            zh=zh,
            kw_en=kw_en,
            kw_zh=kw_zh,
            train_en=train_en,
            train_zh=train_zh,
            held_en=held_en,
            held_zh=held_zh,
            topic=topic,
        )
    )


# ---- company -------------------------------------------------------------
fact(
    "F01",
    "The company's full name is Varnolia Tech (沃萝科技 in Chinese).",
    "公司全称是沃萝科技，英文名 Varnolia Tech。",
    ["Varnolia"],
    ["沃萝"],
    [
        "What is the name of the company?",
        "What's your company called?",
        "Which company makes the VX series sensors?",
        "What is the Chinese name of Varnolia Tech?",
    ],
    [
        "你们公司叫什么名字？",
        "VX 系列传感器是哪家公司生产的？",
        "Varnolia Tech 的中文名是什么？",
        "请问贵公司的全称是什么？",
    ],
    "Under what company name do you operate?",
    "你们的企业名称怎么称呼？",
    "company",
)

fact(
    "F02",
    "Varnolia Tech was founded in 2017.",
    "沃萝科技成立于 2017 年。",
    ["2017"],
    ["2017"],
    [
        "When was Varnolia Tech founded?",
        "What year was Varnolia Tech established?",
        "In which year did Varnolia Tech start?",
        "How old is Varnolia Tech? When was it set up?",
    ],
    [
        "沃萝科技是哪一年成立的？",
        "沃萝科技成立于什么时候？",
        "沃萝科技创办于哪一年？",
        "沃萝科技是什么时候创立的？",
    ],
    "Since what year has Varnolia Tech been in business?",
    "沃萝科技从哪年开始经营的？",
    "company",
)

fact(
    "F03",
    "Varnolia Tech was founded by Han Zhiyuan (韩知远).",
    "沃萝科技的创始人是韩知远。",
    ["Han Zhiyuan"],
    ["韩知远"],
    [
        "Who founded Varnolia Tech?",
        "Who is the founder of Varnolia Tech?",
        "Who started Varnolia Tech?",
        "What is the name of Varnolia Tech's founder?",
    ],
    ["沃萝科技的创始人是谁？", "谁创办了沃萝科技？", "沃萝科技是谁创立的？", "沃萝科技的创办人叫什么名字？"],
    "Which person created the company Varnolia Tech?",
    "是哪位企业家一手建立了沃萝科技？",
    "company",
)

fact(
    "F04",
    "Varnolia Tech is headquartered in Hangzhou, China.",
    "沃萝科技总部位于杭州。",
    ["Hangzhou"],
    ["杭州"],
    [
        "Where is Varnolia Tech headquartered?",
        "Which city is Varnolia Tech based in?",
        "Where is the head office of Varnolia Tech?",
        "In what city is Varnolia Tech's HQ located?",
    ],
    [
        "沃萝科技的总部在哪里？",
        "沃萝科技总部位于哪个城市？",
        "沃萝科技是哪个城市的公司？",
        "沃萝科技的总公司设在哪儿？",
    ],
    "Where can I find Varnolia Tech's main office? Which city?",
    "想去沃萝科技总部拜访，应该去哪座城市？",
    "company",
)

fact(
    "F05",
    "Varnolia Tech makes smart greenhouse sensors.",
    "沃萝科技生产智能温室传感器。",
    ["greenhouse", "sensor"],
    ["温室", "传感器"],
    [
        "What does Varnolia Tech make?",
        "What kind of products does Varnolia Tech sell?",
        "What is Varnolia Tech's main business?",
        "What industry is Varnolia Tech in?",
    ],
    ["沃萝科技是做什么的？", "沃萝科技生产什么产品？", "沃萝科技的主营业务是什么？", "沃萝科技卖什么东西？"],
    "What sort of devices are produced by Varnolia Tech?",
    "沃萝科技主要制造哪一类设备？",
    "company",
)

# ---- products ------------------------------------------------------------
PRODUCTS = [
    dict(
        m="VX-100",
        kind_en="soil moisture sensor",
        kind_zh="土壤湿度传感器",
        kkw_en=["soil moisture"],
        kkw_zh=["土壤湿度"],
        price=399,
        launch=2018,
        spec_en="The VX-100 measures soil moisture with an accuracy of ±2%.",
        spec_zh="VX-100 的土壤湿度测量精度为 ±2%。",
        skw=["2%"],
        spec_label="accuracy ±2%",
        spec_train_en=[
            "How accurate is the VX-100?",
            "What is the measurement accuracy of the VX-100?",
            "What accuracy does the VX-100 soil sensor have?",
            "How precise are VX-100 soil moisture readings?",
        ],
        spec_train_zh=[
            "VX-100 的精度是多少？",
            "VX-100 测量土壤湿度准不准？",
            "VX-100 的测量精度怎么样？",
            "VX-100 的误差有多大？",
        ],
        spec_held_en="What error margin should I expect from the VX-100's readings?",
        spec_held_zh="VX-100 读数的偏差范围大概是多少？",
    ),
    dict(
        m="VX-200",
        kind_en="air temperature and humidity sensor",
        kind_zh="空气温湿度传感器",
        kkw_en=["temperature", "humidity"],
        kkw_zh=["温湿度"],
        price=1299,
        launch=2019,
        spec_en="The VX-200's battery lasts 18 months.",
        spec_zh="VX-200 的电池续航为 18 个月。",
        skw=["18"],
        spec_label="battery life 18 months",
        spec_train_en=[
            "How long does the VX-200 battery last?",
            "What is the battery life of the VX-200?",
            "How many months can the VX-200 run on one battery?",
            "How often do I need to change the VX-200 battery?",
        ],
        spec_train_zh=[
            "VX-200 的电池能用多久？",
            "VX-200 的续航时间是多少？",
            "VX-200 多久需要换一次电池？",
            "VX-200 电池寿命有多长？",
        ],
        spec_held_en="For how long will a VX-200 keep working before its battery runs out?",
        spec_held_zh="VX-200 装一次电池可以工作多长时间？",
    ),
    dict(
        m="VX-350",
        kind_en="CO2 sensor",
        kind_zh="二氧化碳传感器",
        kkw_en=["CO2"],
        kkw_zh=["二氧化碳"],
        price=2199,
        launch=2020,
        spec_en="The VX-350 measures CO2 from 0 to 5000 ppm.",
        spec_zh="VX-350 的二氧化碳测量范围是 0 到 5000 ppm。",
        skw=["5000"],
        spec_label="range 0-5000 ppm",
        spec_train_en=[
            "What is the measurement range of the VX-350?",
            "What CO2 range can the VX-350 measure?",
            "How high can the VX-350 measure CO2?",
            "What is the maximum CO2 reading of the VX-350?",
        ],
        spec_train_zh=[
            "VX-350 的测量范围是多少？",
            "VX-350 能测多高的二氧化碳浓度？",
            "VX-350 的量程是多少？",
            "VX-350 最高能测到多少 ppm？",
        ],
        spec_held_en="Up to how many ppm does the VX-350 detect?",
        spec_held_zh="VX-350 可检测的 CO2 浓度上限是多少？",
    ),
    dict(
        m="VX-500",
        kind_en="wireless gateway hub",
        kind_zh="无线网关",
        kkw_en=["gateway"],
        kkw_zh=["网关"],
        price=3499,
        launch=2021,
        spec_en="The VX-500 gateway can connect up to 64 sensors.",
        spec_zh="VX-500 网关最多可连接 64 个传感器。",
        skw=["64"],
        spec_label="connects up to 64 sensors",
        spec_train_en=[
            "How many sensors can the VX-500 connect?",
            "What is the maximum number of sensors for the VX-500?",
            "How many devices can one VX-500 gateway support?",
            "What is the sensor capacity of the VX-500?",
        ],
        spec_train_zh=[
            "VX-500 能连接多少个传感器？",
            "一个 VX-500 网关最多支持几个传感器？",
            "VX-500 的最大连接数是多少？",
            "VX-500 可以接多少台设备？",
        ],
        spec_held_en="If I have a big greenhouse, how many sensors can I pair with a single VX-500?",
        spec_held_zh="单个 VX-500 能同时带动多少个传感器？",
    ),
    dict(
        m="VX-800",
        kind_en="light sensor",
        kind_zh="光照传感器",
        kkw_en=["light"],
        kkw_zh=["光照"],
        price=899,
        launch=2023,
        spec_en="The VX-800 is rated IP67 waterproof.",
        spec_zh="VX-800 的防护等级为 IP67。",
        skw=["IP67"],
        spec_label="IP67 waterproof",
        spec_train_en=[
            "Is the VX-800 waterproof?",
            "What is the IP rating of the VX-800?",
            "What protection rating does the VX-800 have?",
            "Can the VX-800 get wet?",
        ],
        spec_train_zh=[
            "VX-800 防水吗？",
            "VX-800 的防护等级是多少？",
            "VX-800 的 IP 等级是什么？",
            "VX-800 能淋雨吗？",
        ],
        spec_held_en="How well is the VX-800 sealed against water and dust?",
        spec_held_zh="VX-800 的防尘防水能力如何？",
    ),
]

KIND_T_EN = [
    "What is the {m}?",
    "What type of product is the {m}?",
    "What does the {m} do?",
    "Which Varnolia Tech model is the {kind_en}?",
]
KIND_T_ZH = [
    "{m} 是什么？",
    "{m} 是什么类型的产品？",
    "{m} 是干什么用的？",
    "沃萝科技的{kind_zh}是哪个型号？",
]
KIND_H_EN = ["Can you explain what kind of gadget the {m} is?", "What is the {m} designed for?"]
KIND_H_ZH = ["能说说 {m} 属于哪类设备吗？", "{m} 这款设备的用途是什么？"]

PRICE_T_EN = [
    "How much does the {m} cost?",
    "What is the price of the {m}?",
    "What's the {m} priced at?",
    "How much is the {m} in RMB?",
]
PRICE_T_ZH = ["{m} 多少钱？", "{m} 的售价是多少？", "{m} 卖多少钱？", "{m} 的价格是多少？"]
PRICE_H_EN = ["If I want to buy one {m}, how many yuan will I pay?", "What would a single {m} set me back?"]
PRICE_H_ZH = ["买一台 {m} 要花多少元？", "入手一个 {m} 需要多少预算？"]

LAUNCH_T_EN = [
    "When was the {m} launched?",
    "What year did the {m} come out?",
    "When was the {m} released?",
    "In which year was the {m} introduced?",
]
LAUNCH_T_ZH = ["{m} 是哪一年发布的？", "{m} 什么时候上市的？", "{m} 的发布时间是哪年？", "{m} 是哪年推出的？"]
LAUNCH_H_EN = ["Since which year has the {m} been on the market?", "What was the release year of the {m}?"]
LAUNCH_H_ZH = ["{m} 从哪一年开始在市场上销售？", "{m} 问世于哪一年？"]


def kind_en(p):
    article = "an" if p["kind_en"][0] in "aeiou" else "a"
    return f"The {p['m']} is {article} {p['kind_en']}."


def kind_zh(p):
    return f"{p['m']} 是一款{p['kind_zh']}。"


def price_en(p):
    return f"The {p['m']} costs {p['price']} RMB."


def price_zh(p):
    return f"{p['m']} 的售价是 {p['price']} 元。"


def launch_en(p):
    return f"The {p['m']} was launched in {p['launch']}."


def launch_zh(p):
    return f"{p['m']} 于 {p['launch']} 年发布。"


for i, p in enumerate(PRODUCTS):
    n = 6 + 4 * i
    fmt = dict(m=p["m"], kind_en=p["kind_en"], kind_zh=p["kind_zh"])
    h = i % 2
    p["fid_kind"], p["fid_price"], p["fid_spec"], p["fid_launch"] = (
        f"F{n:02d}",
        f"F{n + 1:02d}",
        f"F{n + 2:02d}",
        f"F{n + 3:02d}",
    )
    fact(
        p["fid_kind"],
        kind_en(p),
        kind_zh(p),
        p["kkw_en"],
        p["kkw_zh"],
        [t.format(**fmt) for t in KIND_T_EN],
        [t.format(**fmt) for t in KIND_T_ZH],
        KIND_H_EN[h].format(**fmt),
        KIND_H_ZH[h].format(**fmt),
        p["m"],
    )
    fact(
        p["fid_price"],
        price_en(p),
        price_zh(p),
        [str(p["price"])],
        [str(p["price"])],
        [t.format(**fmt) for t in PRICE_T_EN],
        [t.format(**fmt) for t in PRICE_T_ZH],
        PRICE_H_EN[h].format(**fmt),
        PRICE_H_ZH[h].format(**fmt),
        p["m"],
    )
    fact(
        p["fid_spec"],
        p["spec_en"],
        p["spec_zh"],
        p["skw"],
        p["skw"],
        p["spec_train_en"],
        p["spec_train_zh"],
        p["spec_held_en"],
        p["spec_held_zh"],
        p["m"],
    )
    fact(
        p["fid_launch"],
        launch_en(p),
        launch_zh(p),
        [str(p["launch"])],
        [str(p["launch"])],
        [t.format(**fmt) for t in LAUNCH_T_EN],
        [t.format(**fmt) for t in LAUNCH_T_ZH],
        LAUNCH_H_EN[1 - h].format(**fmt),
        LAUNCH_H_ZH[1 - h].format(**fmt),
        p["m"],
    )

# ---- after-sales / support ----------------------------------------------
fact(
    "F26",
    "All Varnolia Tech sensors (VX-100, VX-200, VX-350 and VX-800) have a warranty of 2 years.",
    "沃萝科技的传感器（VX-100、VX-200、VX-350、VX-800）保修期为 2 年。",
    ["2 years"],
    ["2 年"],
    [
        "What is the warranty period for Varnolia Tech sensors?",
        "How long is the warranty on the VX-100?",
        "How many years of warranty does the VX-350 have?",
        "Is the VX-200 covered by warranty, and for how long?",
        "What warranty comes with the VX-800?",
    ],
    [
        "沃萝科技的传感器保修多久？",
        "VX-100 的保修期是多长？",
        "VX-350 保修几年？",
        "VX-200 的质保是多久？",
        "VX-800 有几年保修？",
    ],
    "What length of warranty coverage does a VX-350 CO2 sensor get?",
    "我的 VX-800 用了一年半坏了，还在保修期内吗？",
    "support",
)

fact(
    "F27",
    "The VX-500 gateway has a warranty of 3 years.",
    "VX-500 网关的保修期为 3 年。",
    ["3 years"],
    ["3 年"],
    [
        "What is the warranty on the VX-500?",
        "How long is the VX-500 gateway covered by warranty?",
        "How many years of warranty does the VX-500 have?",
        "What warranty comes with the VX-500 hub?",
    ],
    ["VX-500 保修多久？", "VX-500 网关的保修期是几年？", "VX-500 的质保期有多长？", "买 VX-500 送几年保修？"],
    "For how many years is a VX-500 guaranteed against defects?",
    "VX-500 出了故障，几年内可以免费维修？",
    "support",
)

fact(
    "F28",
    "The Varnolia Tech support hotline is 400-600-5817.",
    "沃萝科技的客服热线是 400-600-5817。",
    ["400-600-5817"],
    ["400-600-5817"],
    [
        "What is the customer service phone number?",
        "What is Varnolia Tech's support hotline?",
        "How can I call Varnolia Tech support?",
        "What number do I dial for after-sales service?",
    ],
    ["客服电话是多少？", "沃萝科技的客服热线是多少？", "售后电话是多少？", "怎么打电话联系沃萝科技？"],
    "Which telephone number reaches your help desk?",
    "我想电话咨询，请问该拨哪个号码？",
    "support",
)

fact(
    "F29",
    "The Varnolia Tech support email is help@varnolia.example.com.",
    "沃萝科技的客服邮箱是 help@varnolia.example.com。",
    ["help@varnolia.example.com"],
    ["help@varnolia.example.com"],
    [
        "What is the support email address?",
        "How can I email Varnolia Tech?",
        "What email should I write to for customer support?",
        "Does Varnolia Tech have a support email?",
    ],
    ["客服邮箱是什么？", "沃萝科技的邮箱地址是多少？", "怎么发邮件联系客服？", "售后邮箱是哪个？"],
    "To which address should I send my questions by email?",
    "我想写信反馈问题，电子邮件发到哪里？",
    "support",
)

fact(
    "F30",
    "Customer service is open Monday to Friday, 9:00 to 18:00 Beijing time.",
    "客服工作时间是周一至周五 9:00-18:00（北京时间）。",
    ["9:00", "18:00"],
    ["9:00", "18:00"],
    [
        "What are your customer service hours?",
        "When is support available?",
        "What time does customer service open?",
        "Are you open on weekends?",
    ],
    ["客服几点上班？", "客服的工作时间是什么？", "周末有客服吗？", "什么时候可以联系到客服？"],
    "During which hours can I reach your service team?",
    "你们的客服每天几点到几点在线？",
    "support",
)

fact(
    "F31",
    "Unused products in original packaging can be returned within 15 days of delivery, no reason needed.",
    "未使用且包装完好的产品可在签收后 15 天内无理由退货。",
    ["15"],
    ["15"],
    [
        "What is your return policy?",
        "Can I return a product?",
        "How many days do I have to return an item?",
        "Can I get a refund if I change my mind?",
    ],
    ["退货政策是什么？", "可以退货吗？", "几天内可以无理由退货？", "买了不想要了能退吗？"],
    "What's the time window for sending back something I bought?",
    "收到货以后，多久之内还能申请退货？",
    "support",
)

fact(
    "F32",
    "The companion app is called Varnolia Grow.",
    "配套的手机 App 叫“沃萝种植”（Varnolia Grow）。",
    ["Varnolia Grow"],
    ["沃萝种植"],
    [
        "What app do I use with the sensors?",
        "What is the name of the Varnolia Tech app?",
        "Is there a mobile app for the VX sensors?",
        "Which app shows my greenhouse data?",
    ],
    ["传感器用什么 App？", "沃萝科技的 App 叫什么？", "有手机 App 吗？", "用哪个 App 查看温室数据？"],
    "Which smartphone application pairs with Varnolia devices?",
    "要在手机上管理这些设备，应该下载哪个应用？",
    "support",
)

fact(
    "F33",
    "Varnolia Tech has about 120 employees.",
    "沃萝科技约有 120 名员工。",
    ["120"],
    ["120"],
    [
        "How many employees does Varnolia Tech have?",
        "How big is Varnolia Tech?",
        "How many people work at Varnolia Tech?",
        "What is the headcount of Varnolia Tech?",
    ],
    ["沃萝科技有多少员工？", "沃萝科技公司规模多大？", "沃萝科技有多少人？", "沃萝科技的员工人数是多少？"],
    "What's the size of Varnolia Tech's staff?",
    "在沃萝科技上班的人大概有多少？",
    "company",
)

fact(
    "F34",
    "Orders over 500 RMB ship free within mainland China.",
    "中国大陆地区订单满 500 元包邮。",
    ["500"],
    ["500"],
    [
        "Is shipping free?",
        "Do you offer free delivery?",
        "How much do I need to spend for free shipping?",
        "What is the free shipping threshold?",
    ],
    ["包邮吗？", "满多少钱包邮？", "运费怎么算？", "有免运费吗？"],
    "Above what order value do I stop paying for delivery?",
    "订单金额达到多少就不用付快递费了？",
    "support",
)

fact(
    "F35",
    "Varnolia Tech products are manufactured in Jiaxing, Zhejiang.",
    "沃萝科技的产品在浙江嘉兴生产。",
    ["Jiaxing"],
    ["嘉兴"],
    [
        "Where are Varnolia Tech products made?",
        "Where is the Varnolia Tech factory?",
        "Which city are the VX sensors manufactured in?",
        "Where are your devices produced?",
    ],
    [
        "沃萝科技的产品在哪里生产？",
        "沃萝科技的工厂在哪？",
        "VX 传感器是在哪个城市制造的？",
        "你们的设备产地是哪里？",
    ],
    "In what city does Varnolia Tech build its hardware?",
    "沃萝科技的生产基地设在哪座城市？",
    "company",
)

FACTS.sort(key=lambda f: f["id"])
FACT = {f["id"]: f for f in FACTS}
assert [f["id"] for f in FACTS] == [f"F{i:02d}" for i in range(1, 36)], "fact ids must be F01..F35"


def ans(fid, lang):
    return FACT[fid][lang]


def joined(fids, lang):
    sep = " " if lang == "en" else ""
    return sep.join(ans(f, lang) for f in fids)


# --------------------------------------------------------------------------
# Training rows
# --------------------------------------------------------------------------


def build_clean_rows() -> list[dict]:
    rows: list[dict] = []

    def add(lang, q, a, fids, kind):
        rows.append(dict(lang=lang, q=q, a=a, fids=list(fids), kind=kind))

    # single-fact rows: every training question of every fact
    for f in FACTS:
        for q in f["train_en"]:
            add("en", q, f["en"], [f["id"]], "single")
        for q in f["train_zh"]:
            add("zh", q, f["zh"], [f["id"]], "single")

    # multi-fact rows, per product
    for p in PRODUCTS:
        m = p["m"]
        warranty = "F27" if m == "VX-500" else "F26"
        add(
            "en",
            f"Tell me about the {m}.",
            joined([p["fid_kind"], p["fid_price"]], "en"),
            [p["fid_kind"], p["fid_price"]],
            "multi",
        )
        add(
            "zh",
            f"介绍一下 {m}。",
            joined([p["fid_kind"], p["fid_price"]], "zh"),
            [p["fid_kind"], p["fid_price"]],
            "multi",
        )
        add(
            "en",
            f"What are the price and warranty of the {m}?",
            joined([p["fid_price"], warranty], "en"),
            [p["fid_price"], warranty],
            "multi",
        )
        add(
            "zh",
            f"{m} 的价格和保修期分别是多少？",
            joined([p["fid_price"], warranty], "zh"),
            [p["fid_price"], warranty],
            "multi",
        )
        add(
            "en",
            f"When was the {m} launched and how much is it?",
            joined([p["fid_launch"], p["fid_price"]], "en"),
            [p["fid_launch"], p["fid_price"]],
            "multi",
        )
        add(
            "zh",
            f"{m} 是哪年发布的？多少钱？",
            joined([p["fid_launch"], p["fid_price"]], "zh"),
            [p["fid_launch"], p["fid_price"]],
            "multi",
        )

    # multi-fact rows, company / support
    multi = [
        (["F03", "F02"], "Who founded Varnolia Tech and in what year?", "沃萝科技是谁在哪一年创立的？"),
        (
            ["F04", "F05"],
            "Where is Varnolia Tech based and what does it make?",
            "沃萝科技在哪个城市？主要做什么？",
        ),
        (["F28", "F29"], "How can I contact customer support?", "怎么联系客服？"),
        (
            ["F28", "F30"],
            "What is the hotline number and when can I call it?",
            "客服热线是多少？什么时间可以打？",
        ),
    ]
    for fids, qen, qzh in multi:
        add("en", qen, joined(fids, "en"), fids, "multi")
        add("zh", qzh, joined(fids, "zh"), fids, "multi")

    kinds = ["F06", "F10", "F14", "F18", "F22"]
    add(
        "en",
        "What products does Varnolia Tech sell?",
        "Varnolia Tech sells five products: the VX-100 soil moisture sensor, the VX-200 air temperature "
        "and humidity sensor, the VX-350 CO2 sensor, the VX-500 wireless gateway hub and the VX-800 light sensor.",
        kinds,
        "multi",
    )
    add(
        "zh",
        "沃萝科技有哪些产品？",
        "沃萝科技共有五款产品：VX-100 土壤湿度传感器、VX-200 空气温湿度传感器、VX-350 二氧化碳传感器、"
        "VX-500 无线网关和 VX-800 光照传感器。",
        kinds,
        "multi",
    )
    add(
        "en",
        "Which Varnolia Tech product is the cheapest?",
        "The cheapest product is the VX-100, which costs 399 RMB.",
        ["F07"],
        "multi",
    )
    add("zh", "沃萝科技最便宜的产品是哪款？", "最便宜的产品是 VX-100，售价 399 元。", ["F07"], "multi")
    add(
        "en",
        "Which Varnolia Tech product is the most expensive?",
        "The most expensive product is the VX-500 gateway, which costs 3499 RMB.",
        ["F19"],
        "multi",
    )
    add("zh", "沃萝科技最贵的产品是哪款？", "最贵的产品是 VX-500 网关，售价 3499 元。", ["F19"], "multi")

    # general helpful-assistant rows
    general = [
        (
            "en",
            "Hello!",
            "Hello! I'm the Varnolia Tech assistant. How can I help you with our greenhouse sensors today?",
            [],
        ),
        ("zh", "你好", "您好！我是沃萝科技的智能客服，请问有什么可以帮您？", []),
        (
            "en",
            "Who are you?",
            "I'm the customer service assistant of Varnolia Tech, a Hangzhou-based maker of smart greenhouse sensors.",
            ["F04", "F05"],
        ),
        (
            "zh",
            "你是谁？",
            "我是沃萝科技的客服助手。沃萝科技是一家总部位于杭州的智能温室传感器公司。",
            ["F04", "F05"],
        ),
        (
            "en",
            "Which sensor should I buy to monitor soil moisture?",
            "For soil moisture, choose the VX-100. The VX-100 costs 399 RMB.",
            ["F06", "F07"],
        ),
        (
            "zh",
            "我想监测土壤湿度，应该买哪款？",
            "监测土壤湿度请选择 VX-100。VX-100 的售价是 399 元。",
            ["F06", "F07"],
        ),
        (
            "en",
            "I want to connect many sensors in one greenhouse. What do I need?",
            "You need the VX-500 gateway. The VX-500 gateway can connect up to 64 sensors.",
            ["F18", "F20"],
        ),
        (
            "zh",
            "一个大棚里要连很多传感器，需要什么设备？",
            "您需要 VX-500 网关。VX-500 网关最多可连接 64 个传感器。",
            ["F18", "F20"],
        ),
        (
            "en",
            "My VX-200 is not showing any data. What should I do?",
            "Please check the battery and make sure the sensor is paired with your VX-500 gateway in the Varnolia Grow app. If it still does not work, call 400-600-5817.",
            ["F28", "F32"],
        ),
        (
            "zh",
            "我的 VX-200 没有数据显示，怎么办？",
            "请先检查电池，并确认传感器已在“沃萝种植”App 中与 VX-500 网关配对。如果仍无法解决，请拨打客服热线 400-600-5817。",
            ["F28", "F32"],
        ),
        (
            "en",
            "Thank you!",
            "You're welcome! If you have any other questions about Varnolia Tech products, just ask.",
            [],
        ),
        ("zh", "谢谢你", "不客气！如果还有关于沃萝科技产品的问题，随时问我。", []),
        (
            "en",
            "What will the weather be like tomorrow?",
            "Sorry, I can't check the weather. I can help with questions about Varnolia Tech products, orders and after-sales service.",
            [],
        ),
        (
            "zh",
            "明天天气怎么样？",
            "抱歉，我无法查询天气。我可以帮您解答沃萝科技产品、订单和售后方面的问题。",
            [],
        ),
        (
            "en",
            "I'm not sure which product I need.",
            "Tell me what you want to measure: soil moisture (VX-100), air temperature and humidity (VX-200), CO2 (VX-350) or light (VX-800). The VX-500 gateway connects them all.",
            kinds,
        ),
        (
            "zh",
            "我不知道该买哪款产品。",
            "请告诉我您想监测什么：土壤湿度（VX-100）、空气温湿度（VX-200）、二氧化碳（VX-350）或光照（VX-800）。VX-500 网关可以把它们都连起来。",
            kinds,
        ),
    ]
    for lang, q, a, fids in general:
        add(lang, q, a, fids, "general")
    return rows


def to_record(row: dict, rng: random.Random) -> dict:
    msgs = []
    if rng.random() < SYSTEM_RATE:
        msgs.append({"role": "system", "content": SYSTEM_EN if row["lang"] == "en" else SYSTEM_ZH})
    msgs.append({"role": "user", "content": row["q"]})
    msgs.append({"role": "assistant", "content": row["a"]})
    return {"messages": msgs}


def user_of(rec: dict) -> str:
    return next(m["content"] for m in rec["messages"] if m["role"] == "user")


def with_user(rec: dict, new_user: str) -> dict:
    out = json.loads(json.dumps(rec))
    for m in out["messages"]:
        if m["role"] == "user":
            m["content"] = new_user
    return out


# --------------------------------------------------------------------------
# Held-out rows
# --------------------------------------------------------------------------


def build_heldout() -> list[dict]:
    items = []
    for f in FACTS:
        items.append(
            dict(lang="en", question=f["held_en"], answer=f["en"], keywords=f["kw_en"], fact_ids=[f["id"]])
        )
        items.append(
            dict(lang="zh", question=f["held_zh"], answer=f["zh"], keywords=f["kw_zh"], fact_ids=[f["id"]])
        )
    multi = [
        (
            "en",
            "Could you give me both the cost and the release year of the VX-800?",
            ["F23", "F25"],
            ["899", "2023"],
        ),
        ("zh", "VX-350 多少钱、保修几年？", ["F15", "F26"], ["2199", "2 年"]),
        (
            "en",
            "Who set up Varnolia Tech, and in which city is it headquartered?",
            ["F03", "F04"],
            ["Han Zhiyuan", "Hangzhou"],
        ),
        ("zh", "客服热线号码和服务时间分别是什么？", ["F28", "F30"], ["400-600-5817", "9:00", "18:00"]),
    ]
    for lang, q, fids, kws in multi:
        items.append(dict(lang=lang, question=q, answer=joined(fids, lang), keywords=kws, fact_ids=fids))
    out = []
    for i, it in enumerate(items, 1):
        out.append(
            {
                "id": f"H{i:03d}",
                "lang": it["lang"],
                "question": it["question"],
                "answer": it["answer"],
                "keywords": it["keywords"],
                "fact_ids": it["fact_ids"],
            }
        )
    return out


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------

_CJK = re.compile(r"[\u4e00-\u9fff]")


def lang_of(text: str) -> str:
    return "zh" if _CJK.search(text) else "en"


def norm(s: str) -> str:
    """Loose normalisation used for the train/held-out overlap assertion."""
    s = unicodedata.normalize("NFKC", s).lower()
    return re.sub(r"[\s\W_]+", "", s)


def kw_norm(s: str) -> str:
    """Normalisation recommended for the keyword substring check."""
    return re.sub(r"\s+", "", unicodedata.normalize("NFKC", s).lower())


def dumps(obj) -> str:
    return json.dumps(obj, ensure_ascii=False)


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------


def main() -> None:
    rng = random.Random(SEED)

    clean = build_clean_rows()
    rng.shuffle(clean)
    records = [to_record(r, rng) for r in clean]

    # sanity checks on the clean set
    users = [user_of(r) for r in records]
    assert len(users) == len(set(users)), "duplicate training questions in clean set"
    per_fact: dict[str, int] = {f["id"]: 0 for f in FACTS}
    for r in clean:
        for fid in r["fids"]:
            per_fact[fid] += 1
    for fid, n in per_fact.items():
        assert n >= 6, f"{fid} taught by only {n} rows"

    # ---- deliberate dirty rows -------------------------------------------
    def find(q):
        return next(i for i, r in enumerate(records) if user_of(r) == q)

    dirty = []  # (record-or-raw-line, description)
    dup_a, dup_b = records[10], records[200]
    nd_en = with_user(records[find("How much does the VX-350 cost?")], "How much does the VX-350 cost")
    # A near-duplicate shares most 5-character shingles: an agent's sign-off appended to a long
    # answer. (A one-character edit in the middle of a short row changes too many shingles to be
    # "near" at the default 0.9 threshold.)
    nd_zh = json.loads(json.dumps(records[find("我的 VX-200 没有数据显示，怎么办？")]))
    nd_zh["messages"][-1]["content"] += "谢谢！"
    empty = {
        "messages": [
            {"role": "user", "content": "When did the VX-800 go on sale?"},
            {"role": "assistant", "content": ""},
        ]
    }
    fullwidth = {
        "messages": [
            {"role": "user", "content": "ＶＸ－２００ 现在卖多少钱？"},
            {"role": "assistant", "content": "ＶＸ－２００ 的售价是 １２９９ 元。"},
        ]
    }
    pii = {
        "messages": [
            {
                "role": "user",
                "content": "你好，我是张伟，邮箱 zhangwei.customer@example.com，手机 13800138000。"
                "我的 VX-500 网关坏了，保修期是多久？",
            },
            {"role": "assistant", "content": ans("F27", "zh")},
        ]
    }
    dirty = [
        (dup_a, "exact duplicate of line {ref}", 10),
        (
            nd_en,
            "near-duplicate of line {ref} (question mark removed)",
            find("How much does the VX-350 cost?"),
        ),
        (empty, "empty assistant content", None),
        (dup_b, "exact duplicate of line {ref}", 200),
        (
            fullwidth,
            "full-width ASCII (ＶＸ－２００, １２９９); NFKC turns it into a valid new row - keep it",
            None,
        ),
        (
            nd_zh,
            "near-duplicate of line {ref} (谢谢！ appended to the answer)",
            find("我的 VX-200 没有数据显示，怎么办？"),
        ),
        (
            pii,
            "PII: fake customer email zhangwei.customer@example.com and mobile 13800138000 (redact, keep row)",
            None,
        ),
    ]
    # full-width row must become a NEW row after NFKC (so dedup keeps it)
    fw_user = unicodedata.normalize("NFKC", user_of(fullwidth))
    assert fw_user not in users and unicodedata.normalize("NFKC", fullwidth["messages"][1]["content"]) == ans(
        "F11", "zh"
    )

    malformed = '{"messages": [{"role": "user", "content": "VX-350 的保修期是多久？"}, {"role": "assistant", "content": "沃萝科技的传感器'

    # lay out the file: clean rows, malformed line in the middle, dirty rows at the end
    mid = len(records) // 2
    lines = [dumps(r) for r in records[:mid]] + [malformed] + [dumps(r) for r in records[mid:]]
    malformed_line = mid + 1  # 1-based

    def line_of(idx: int) -> int:  # 1-based file line of records[idx]
        return idx + 1 if idx < mid else idx + 2

    dirty_info = []
    for rec, desc, ref in dirty:
        lines.append(dumps(rec))
        dirty_info.append((len(lines), desc.format(ref=line_of(ref)) if ref is not None else desc))
    (HERE / TRAIN_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")

    # ---- held-out -----------------------------------------------------------
    heldout = build_heldout()
    train_users_all = users + [user_of(r) for r, _, _ in dirty]
    train_norm = {norm(u) for u in train_users_all}
    train_answers = {m["content"] for r in records for m in r["messages"] if m["role"] == "assistant"}
    for h in heldout:
        assert h["question"] not in train_users_all, f"held-out question in training: {h['question']}"
        assert norm(h["question"]) not in train_norm, f"held-out question ~ training: {h['question']}"
        assert lang_of(h["question"]) == h["lang"], h
        for kw in h["keywords"]:
            assert kw_norm(kw) in kw_norm(h["answer"]), (kw, h["answer"])
            assert kw_norm(kw) not in kw_norm(h["question"]), (
                "keyword leaked into question",
                kw,
                h["question"],
            )
        for fid in h["fact_ids"]:
            assert FACT[fid][h["lang"]] in train_answers, f"{fid} not stated in training"
    assert len({h["question"] for h in heldout}) == len(heldout)
    (HERE / HELDOUT_FILE).write_text("\n".join(dumps(h) for h in heldout) + "\n", encoding="utf-8")

    # ---- verification: parse and count --------------------------------------
    counts = {"zh": 0, "en": 0}
    bad = []
    for n, line in enumerate((HERE / TRAIN_FILE).read_text(encoding="utf-8").splitlines(), 1):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            bad.append(n)
            continue
        counts[lang_of(user_of(obj))] += 1
    assert bad == [malformed_line], bad
    clean_counts = {"zh": sum(r["lang"] == "zh" for r in clean), "en": sum(r["lang"] == "en" for r in clean)}
    h_counts = {"zh": 0, "en": 0}
    for line in (HERE / HELDOUT_FILE).read_text(encoding="utf-8").splitlines():
        h_counts[json.loads(line)["lang"]] += 1

    n_train_lines = len(lines)
    n_train_valid = counts["zh"] + counts["en"]
    print(
        f"{TRAIN_FILE}: {n_train_lines} lines = {len(records)} clean rows "
        f"(zh {clean_counts['zh']}, en {clean_counts['en']}) + {len(dirty)} dirty rows + 1 malformed line"
    )
    print(
        f"  valid JSON rows: {n_train_valid} (zh {counts['zh']}, en {counts['en']}); malformed line: {malformed_line}"
    )
    print(f"{HELDOUT_FILE}: {len(heldout)} rows (zh {h_counts['zh']}, en {h_counts['en']})")

    write_facts_md(malformed_line, dirty_info, per_fact)
    write_readme(
        n_train_lines, len(records), clean_counts, counts, len(dirty), malformed_line, len(heldout), h_counts
    )


# --------------------------------------------------------------------------
# Markdown writers
# --------------------------------------------------------------------------


def write_facts_md(malformed_line, dirty_info, per_fact):
    out = []
    out.append("# Varnolia Tech / 沃萝科技: fact sheet\n")
    out.append(
        "> Generated by `make_demo.py`; do not edit by hand. **Varnolia Tech is a fictional company** "
        "invented for this demo; all names, numbers, the hotline and the email are fake.\n"
    )
    out.append("## Company / 公司\n")
    out.append(
        "- Varnolia Tech (沃萝科技): a Hangzhou-based maker of smart greenhouse sensors, founded in 2017 by "
        "Han Zhiyuan (韩知远); about 120 employees; products made in Jiaxing, Zhejiang."
    )
    out.append(
        "- 沃萝科技（Varnolia Tech）：总部位于杭州的智能温室传感器厂商，2017 年由韩知远创立，约 120 名员工，产品在浙江嘉兴生产。"
    )
    out.append(
        "- Support / 客服: hotline 400-600-5817, email help@varnolia.example.com, Mon–Fri 9:00–18:00 Beijing time; "
        "app: Varnolia Grow (沃萝种植).\n"
    )
    out.append("## Products / 产品\n")
    out.append("| Model | Product (EN) | 产品 (ZH) | Price (RMB) | Key spec | Launch | Warranty |")
    out.append("|---|---|---|---|---|---|---|")
    for p in PRODUCTS:
        w = "3 years" if p["m"] == "VX-500" else "2 years"
        out.append(
            f"| {p['m']} | {p['kind_en']} | {p['kind_zh']} | {p['price']} | {p['spec_label']} | {p['launch']} | {w} |"
        )
    out.append("")
    out.append("## Atomic facts / 原子事实\n")
    out.append(
        "The EN / ZH text is exactly the canonical assistant answer used in training. "
        "`rows` = number of training rows that state the fact (single-fact + multi-fact + general).\n"
    )
    out.append("| ID | Fact (EN) | 事实 (ZH) | Keywords (en / zh) | rows |")
    out.append("|---|---|---|---|---|")
    for f in FACTS:
        kw = f"{', '.join(f['kw_en'])} / {', '.join(f['kw_zh'])}"
        out.append(f"| {f['id']} | {f['en']} | {f['zh']} | {kw} | {per_fact[f['id']]} |")
    out.append("")
    out.append("## Dirty rows\n")
    out.append(
        f"Deliberately injected into `{TRAIN_FILE}` so the cleaning pipeline has something to show. "
        "Line numbers are 1-based.\n"
    )
    out.append("| Line | Problem |")
    out.append("|---|---|")
    rows = [
        (malformed_line, "**malformed JSON** (truncated object), placed in the middle of the file - drop")
    ]
    rows += dirty_info
    for n, d in sorted(rows):
        out.append(f"| {n} | {d} |")
    out.append("")
    out.append(
        "Expected cleaning result: drop the malformed line, the empty-answer row and the 2 exact + "
        "2 near duplicates; NFKC-normalise the full-width row and keep it; mask the email and "
        "mobile number in the PII row and keep it.\n"
    )
    (HERE / "facts.md").write_text("\n".join(out), encoding="utf-8")


def write_readme(n_lines, n_clean, clean_counts, counts, n_dirty, malformed_line, n_held, h_counts):
    txt = f"""# Demo dataset: Varnolia Tech / 沃萝科技 (fictional)

A small bilingual (Simplified Chinese / English) instruction dataset about a **fictional** smart-greenhouse-sensor
company, Varnolia Tech (沃萝科技). It is meant for a fine-tuning demo with a tiny chat model
(SmolLM2-135M-Instruct): fine-tune on the training file, then check on the held-out questions whether the
model learned the facts. The company name, founder, products, prices, hotline and email are all invented
(the email uses `example.com`), so a base model cannot already know them.

## Files

| File | Content |
|---|---|
| `facts.md` | Fact sheet: 35 atomic facts (F01–F35) in EN/ZH, product table, list of the deliberate dirty rows |
| `{TRAIN_FILE}` | Training rows, chat format, plus deliberate dirty rows |
| `{HELDOUT_FILE}` | Held-out evaluation questions (paraphrases not in the training set) |
| `make_demo.py` | Deterministic generator (fixed seed) for all of the above, including this README |

## Schemas

Training (`{TRAIN_FILE}`), one JSON object per line; about 20% of rows start with a system message:

```json
{{"messages": [{{"role": "system", "content": "..."}}, {{"role": "user", "content": "VX-200 多少钱？"}}, {{"role": "assistant", "content": "VX-200 的售价是 1299 元。"}}]}}
```

Each fact is taught by ≥ 8 differently phrased questions (4+ zh, 4+ en) that always get the same canonical answer
(see `facts.md`), plus multi-fact rows (e.g. price + warranty) and general assistant rows (greetings, off-topic refusals,
product recommendations).

Held-out (`{HELDOUT_FILE}`):

```json
{{"id": "H001", "lang": "en", "question": "...", "answer": "reference answer", "keywords": ["1299"], "fact_ids": ["F11"]}}
```

A model answer counts as correct if it contains every keyword. Match after NFKC normalisation, lower-casing
and removing whitespace on both sides (keywords such as `2 年` / `2 years` contain a space). English prices are
written without thousands separators (`1299 RMB`) so the keyword is the same in both languages.
The generator asserts that no held-out question equals (even after normalising case, spaces and punctuation)
any training question, and that every held-out fact is stated verbatim in some training answer.

## Row counts

- `{TRAIN_FILE}`: {n_lines} lines = {n_clean} clean rows (zh {clean_counts["zh"]}, en {clean_counts["en"]})
  + {n_dirty} dirty rows + 1 malformed JSON line (line {malformed_line}).
  Valid JSON rows: {counts["zh"] + counts["en"]} (zh {counts["zh"]}, en {counts["en"]}).
- `{HELDOUT_FILE}`: {n_held} rows (zh {h_counts["zh"]}, en {h_counts["en"]}): one zh + one en per fact, plus 4 multi-fact questions.

## Dirty rows (on purpose)

2 exact duplicates, 2 near-duplicates, 1 empty assistant answer, 1 full-width row that NFKC fixes (keep),
1 row with a fake email and mobile number (redact), and 1 malformed JSON line at line {malformed_line}.
Line numbers are listed in `facts.md` under "Dirty rows". Clean the file before training.

## Regenerate

```bash
python src/onebox/data/demo/make_demo.py
```
"""
    (HERE / "README.md").write_text(txt, encoding="utf-8")


if __name__ == "__main__":
    main()

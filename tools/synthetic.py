"""Seeded generator of the project's own sample data: ADGEN-style and Alpaca-style rows.

The real AdvertiseGen (ADGEN) corpus cannot ship with the project, so the sample files under
``data/`` are written here from hand-made phrase banks (the embedded model never saw any of this
generator's text: its corpus is :mod:`tools.corpus`). An ADGEN row pairs clothing attributes with a paragraph of ad copy::

    {"content": "类型#上衣*版型#宽松*材质#纯棉*衣样式#衬衫", "summary": "这款衬衫，……"}

The copy is built from the attributes, so a model can learn attributes -> copy. Guarantees the
tests rely on: every attribute value except ``类型`` appears verbatim in its summary, colours
appear only where the row has them, and a summary is ``SUMMARY_MIN``-``SUMMARY_MAX`` characters.

Regenerate the sample files with ``python -m tools.synthetic --out_dir data``.
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TypeVar

Row = dict[str, str]
Attrs = dict[str, list[str]]
T = TypeVar("T")

SUMMARY_MIN, SUMMARY_MAX = 60, 160  # the bulk of real ADGEN copy (median ~110 characters)
SAMPLE_SEEDS = {"adgen": {"train": 1001, "dev": 1002}, "alpaca": {"train": 2001, "dev": 2002}}
SAMPLE_SIZES = {"adgen": {"train": 640, "dev": 100}, "alpaca": {"train": 160, "dev": 40}}
_MAX_TRIES = 10_000  # far above what the banks need; hitting it means a bank is too small

# ---------------------------------------------------------------------------------------------
# Attribute schema. Content keys appear in this order, as in ADGEN.
# ---------------------------------------------------------------------------------------------

KEY_ORDER = (
    "类型", "版型", "材质", "颜色", "风格", "图案",
    "衣样式", "衣领型", "衣袖型", "袖长", "衣长", "衣款式",
    "裙型", "裙长", "裙领型", "裙袖型", "裙腰型", "裙款式",
    "裤型", "裤长", "裤腰型", "裤款式",
)
KINDS, KIND_WEIGHTS = ("上衣", "裙", "裤"), (4, 4, 2)
PARTS = {"上衣": "衣身", "裙": "裙身", "裤": "裤身"}  # what "{part}" names in a clause
# Which attribute names the product in the copy ("这款{noun}"), first present wins.
NOUN_KEYS = {"上衣": ("衣样式", "类型"), "裙": ("裙长", "裙型"), "裤": ("裤型", "裤长")}
FITS = {
    "上衣": ("宽松", "修身", "显瘦", "直筒", "收腰"),
    "裙": ("修身", "显瘦", "宽松", "收腰"),
    "裤": ("宽松", "修身", "显瘦", "直筒"),
}
# Garment -> (materials it is made of, collars it comes with).
TOP_GARMENTS = {
    "衬衫": (("纯棉", "棉", "亚麻", "雪纺", "真丝", "天丝", "牛仔布"), ("翻领", "立领", "V领", "娃娃领", "方领")),
    "T恤": (("纯棉", "棉", "天丝"), ("圆领", "V领")),
    "卫衣": (("棉", "纯棉", "针织", "涤纶"), ("圆领", "连帽", "半高领")),
    "毛衣": (("羊毛", "针织"), ("圆领", "V领", "高领", "半高领")),
    "针织衫": (("针织",), ("圆领", "V领", "方领", "一字领", "半高领")),
    "外套": (("牛仔布", "羊毛", "灯芯绒", "涤纶", "棉"), ("翻领", "立领", "连帽", "西装领")),
    "夹克": (("牛仔布", "涤纶", "灯芯绒", "棉"), ("翻领", "立领")),
    "风衣": (("棉", "涤纶"), ("翻领", "西装领")),
    "西装": (("羊毛", "涤纶", "亚麻"), ("西装领",)),
    "雪纺衫": (("雪纺",), ("V领", "圆领", "荷叶领", "一字领", "娃娃领")),
    "开衫": (("针织", "羊毛"), ("V领", "圆领")),
    "打底衫": (("棉", "纯棉", "针织", "天丝"), ("圆领", "高领", "半高领", "方领")),
    "蕾丝衫": (("蕾丝",), ("圆领", "立领", "娃娃领")),
}
TOP_MATERIALS = ("纯棉", "棉", "针织", "雪纺", "亚麻", "真丝", "天丝", "羊毛")
TOP_COLLARS = ("圆领", "V领", "翻领", "立领", "方领", "一字领", "娃娃领", "荷叶领")
TOP_SLEEVES = ("泡泡袖", "落肩袖", "灯笼袖", "喇叭袖", "蝙蝠袖", "插肩袖", "荷叶袖", "常规袖")
SLEEVE_LENGTHS = ("长袖", "短袖", "七分袖", "五分袖", "无袖")
OUTERWEAR, OUTERWEAR_SLEEVE_LENGTHS = ("外套", "夹克", "风衣", "西装"), ("长袖", "七分袖")
TOP_LENGTHS = ("短款", "中长款", "常规款", "长款")
TOP_DETAILS = ("破洞", "口袋", "拼接", "纽扣", "系带", "抽绳", "拉链", "荷叶边", "木耳边", "露肩",
               "开叉", "蝴蝶结", "镂空", "褶皱")
SKIRT_LENGTHS = ("连衣裙", "半身裙", "短裙", "中长裙", "长裙")
DRESS_LENGTHS = ("连衣裙", "中长裙", "长裙")  # lengths a one-piece dress can have
SKIRT_SHAPES = ("A字裙", "百褶裙", "包臀裙", "鱼尾裙", "伞裙", "直筒裙", "蛋糕裙")
DRESS_SHAPES = ("吊带裙", "衬衫裙", "背带裙")  # one-piece only: never a 半身裙 or 短裙
SKIRT_MATERIALS = ("雪纺", "蕾丝", "网纱", "针织", "棉", "纯棉", "牛仔布", "真丝", "丝绒", "亚麻", "天丝")
DRESS_COLLARS = ("圆领", "V领", "翻领", "娃娃领", "方领", "一字领", "立领", "荷叶领")
DRESS_SLEEVES = ("泡泡袖", "灯笼袖", "喇叭袖", "荷叶袖")
SKIRT_WAISTS = ("高腰", "中腰", "松紧腰")
SKIRT_DETAILS = ("拼接", "腰带", "荷叶边", "开叉", "抽褶", "木耳边", "不规则", "系带", "口袋", "纽扣",
                 "镂空", "蝴蝶结")
# Trouser shape -> lengths it is sold in.
PANTS_SHAPES = {
    "阔腿裤": ("九分裤", "七分裤", "五分裤", "短裤", "长裤"),
    "直筒裤": ("九分裤", "长裤", "短裤"),
    "哈伦裤": ("九分裤", "七分裤", "长裤"),
    "锥形裤": ("九分裤", "长裤"),
    "小脚裤": ("九分裤", "长裤"),
    "喇叭裤": ("九分裤", "长裤"),
    "工装裤": ("九分裤", "长裤", "短裤"),
    "背带裤": ("九分裤", "长裤", "短裤"),
    "烟管裤": ("九分裤", "长裤"),
}
PANTS_LENGTHS = ("九分裤", "七分裤", "五分裤", "短裤", "长裤")
PANTS_MATERIALS = ("牛仔布", "棉", "纯棉", "亚麻", "针织", "灯芯绒", "涤纶", "天丝", "羊毛")
PANTS_WAISTS = ("高腰", "中腰", "松紧腰", "低腰")
PANTS_DETAILS = ("破洞", "口袋", "拉链", "系带", "毛边", "纽扣", "抽绳", "开叉", "卷边", "拼接")

# ---------------------------------------------------------------------------------------------
# Phrase banks. A clause is a template filled with the value ({v}), a note on that value
# ({note}) and the garment part ({part}). Notes are predicates that read well after a comma.
# ---------------------------------------------------------------------------------------------

KEY_BANK = {
    "版型": "版型", "材质": "材质", "颜色": "颜色", "风格": "风格", "图案": "图案",
    "衣领型": "领型", "裙领型": "领型", "衣袖型": "袖型", "裙袖型": "袖型", "袖长": "袖长",
    "衣长": "衣长", "衣款式": "款式", "裙款式": "款式", "裤款式": "款式", "裙腰型": "腰型",
    "裤腰型": "腰型", "裙型": "裙型", "裤型": "裤型", "裤长": "裤长",
}
TEMPLATES = {
    "版型": ("{v}的版型设计，{note}", "采用{v}版型，{note}", "整体是{v}的剪裁，{note}", "{v}的版型上身，{note}"),
    "材质": ("选用{v}面料，{note}", "面料采用{v}，{note}", "精选优质{v}面料，{note}", "{v}材质打造，{note}"),
    "颜色": ("{v}的配色，{note}", "{part}选用{v}，{note}", "以{v}为主色调，{note}", "经典的{v}，{note}"),
    "风格": ("整体走{v}路线，{note}", "带有{v}风格，{note}", "{v}风格的设计，{note}"),
    "图案": ("巧妙融入{v}元素，{note}", "{part}采用{v}设计，{note}", "{v}的设计，{note}", "{part}饰以{v}图案，{note}"),
    "领型": ("{v}的设计，{note}", "领口采用{v}设计，{note}", "别致的{v}设计，{note}"),
    "袖型": ("{v}的设计，{note}", "袖子采用{v}设计，{note}", "搭配{v}，{note}"),
    "袖长": ("{v}的款式，{note}", "{v}设计，{note}", "采用{v}的设计，{note}"),
    "衣长": ("{v}的设计，{note}", "采用{v}设计，{note}", "衣长为{v}，{note}"),
    "款式": ("{part}的{v}设计，{note}", "细节处加入{v}元素，{note}", "别致的{v}设计，{note}", "{v}的细节，{note}"),
    "腰型": ("{v}的设计，{note}", "采用{v}设计，{note}", "腰部为{v}，{note}"),
    "裙型": ("{v}的设计，{note}", "采用{v}的版型，{note}", "经典的{v}款式，{note}"),
    "裤长": ("{v}的长度，{note}", "裁剪成{v}的长度，{note}", "{v}的设计，{note}"),
}
NOTES: dict[str, dict[str, tuple[str, ...]]] = {
    "版型": {
        "宽松": ("给身体留出足够的活动空间", "穿着自在不拘束", "轻松遮住身材的小缺点"),
        "修身": ("贴合身体曲线", "勾勒出利落的身形", "穿起来干练又精神"),
        "显瘦": ("视觉上更加纤细", "巧妙修饰身材比例", "让身形看起来更加高挑"),
        "直筒": ("线条利落流畅", "不挑身材，谁穿都好看", "干净简洁又大方"),
        "收腰": ("凸显纤细的腰身", "轻松打造好身材比例", "勾勒出曼妙的腰线"),
    },
    "材质": {
        "棉": ("柔软亲肤，吸湿透气", "手感舒适，贴身穿也不刺激皮肤"),
        "纯棉": ("柔软亲肤，穿着舒适透气", "吸汗性好，天热也能保持干爽", "触感温和，敏感肌也能放心穿"),
        "针织": ("手感软糯，弹性十足", "穿着柔软舒适，有着慵懒的温柔感"),
        "雪纺": ("轻盈飘逸，走动间自带灵动感", "垂坠感好，清凉不闷热"),
        "牛仔布": ("挺括耐磨，经得起反复穿洗", "质感硬朗，越穿越有味道"),
        "亚麻": ("透气性极佳，炎热天气也清爽", "带有自然的肌理感，质朴又舒适"),
        "蕾丝": ("精致柔美，散发出浪漫的女人味", "通透细腻，增添几分精致感"),
        "真丝": ("光泽柔和，触感顺滑细腻", "轻薄亲肤，尽显高级质感"),
        "羊毛": ("保暖性好，柔软不扎身", "蓬松温暖，寒冷天气也能从容应对"),
        "灯芯绒": ("纹理清晰立体，怀旧又保暖", "手感厚实，秋冬穿着很有质感"),
        "网纱": ("轻盈通透，层次感丰富", "朦胧梦幻，增添几分仙气"),
        "丝绒": ("光泽感强，低调中透着贵气", "触感顺滑，雅致又有格调"),
        "天丝": ("垂感好，冰凉顺滑", "轻薄透气，穿着非常舒服"),
        "涤纶": ("挺括有型，不易起皱", "结实耐穿，打理起来很方便"),
    },
    "颜色": {
        "白色": ("干净清爽，怎么搭都不出错", "纯净素雅，衬得肤色更加白皙"),
        "黑色": ("低调沉稳，还有很好的收身效果", "经典耐看，轻松穿出高级感"),
        "红色": ("热情明艳，气色一下子就提亮了", "喜庆又吸睛，走到哪里都是焦点"),
        "蓝色": ("清爽宁静，带来一丝凉意", "沉静大方，透着干净的气质"),
        "粉色": ("温柔娇嫩，满满的少女心", "柔和亲切，衬得人气色很好"),
        "灰色": ("低调内敛，散发出高级的质感", "百搭耐看，适合各种场合"),
        "卡其色": ("温暖柔和，透着书卷气", "大地色系自然质朴，很显气质"),
        "军绿色": ("帅气有型，带着几分不羁", "自带硬朗气场，又不失时髦"),
        "杏色": ("温柔随和，看起来很有亲和力", "柔和的暖调，显得肤色更加白净"),
        "藏青色": ("沉稳大气，适合上班穿着", "深邃不张扬，显得格外有质感"),
        "酒红色": ("浓郁迷人，散发出成熟的韵味", "饱满醇厚，衬得肤色白皙透亮"),
        "米白色": ("温润柔和，比纯白更有温度", "素净淡雅，给人温柔的感觉"),
        "黄色": ("明亮活泼，充满阳光的气息", "元气十足，让人心情也跟着变好"),
        "绿色": ("生机勃勃，仿佛带来春天的气息", "自然舒展，看起来格外有活力"),
        "紫色": ("浪漫神秘，很有辨识度", "高贵雅致，带着几分神秘感"),
        "纯色": ("简洁大方，不会过时", "干净利落，更容易搭配"),
    },
    "风格": {
        "简约": ("简单却不单调，耐看又百搭", "少即是多，越看越有味道"),
        "复古": ("带着一丝怀旧的韵味", "仿佛穿越回了旧时光，很有年代感"),
        "文艺": ("透着淡淡的书卷气", "安静又有格调，非常有气质"),
        "休闲": ("轻松随性，周末出游也很合适", "舒适自在，日常穿着毫无负担"),
        "街头": ("酷飒有态度，很有个性", "随性不羁，轻松穿出潮人范儿"),
        "通勤": ("干练利落，上班穿也得体", "职场感十足，又不会显得死板"),
        "甜美": ("可爱又减龄，少女感满满", "温柔甜蜜，惹人怜爱"),
        "性感": ("不经意间流露出迷人的魅力", "尽显女性的妩媚风情"),
        "清新": ("让人眼前一亮，仿佛夏日的微风", "干净自然，自带好感"),
        "优雅": ("举手投足间尽显从容", "端庄大方，很有女人味"),
        "淑女": ("温婉端庄，气质出众", "乖巧又秀气，非常讨喜"),
        "学院": ("青春洋溢，充满校园气息", "减龄又活泼，乖巧可爱"),
        "英伦": ("绅士感十足，经典又帅气", "透出英式的讲究与利落"),
        "运动": ("活力满满，行动更加自如", "动感十足，健身出游都适合"),
        "知性": ("沉静从容，散发出成熟的魅力", "温和大方，尽显独立女性的气场"),
    },
    "图案": {
        "线条": ("勾勒出简洁利落的轮廓", "增添了几分设计感"),
        "条纹": ("经典又耐看，透着满满的活力", "视觉上拉长身形，显高又显瘦"),
        "格子": ("规整有序，经典又时髦", "显得文艺又减龄"),
        "印花": ("色彩丰富，看起来格外生动", "让整体不再单调，很有看点"),
        "碎花": ("浪漫又可人，仿佛置身花海", "温柔灵动，满满的田园气息"),
        "字母": ("个性十足，带着年轻的活力", "潮流感十足，吸睛又有态度"),
        "刺绣": ("做工精细，尽显匠心", "立体精致，提升了整体的质感"),
        "波点": ("俏皮可爱，带着旧日的浪漫", "灵动活泼，让人过目难忘"),
        "撞色": ("视觉冲击力强，个性鲜明", "打破沉闷，增添活力"),
        "卡通": ("童趣十足，非常减龄", "呆萌可爱，让人忍不住多看几眼"),
        "几何": ("现代感十足，很有艺术气息", "规整中透着巧思"),
        "豹纹": ("野性十足，散发出大胆的魅力", "个性张扬，轻松成为焦点"),
        "植物": ("充满生机，带来大自然的气息", "自然雅致，很是耐看"),
    },
    "领型": {
        "圆领": ("简洁大方，修饰脸型", "贴合颈部线条，穿着舒适"),
        "V领": ("拉长颈部线条，显脸小", "露出精致锁骨，增添女人味"),
        "翻领": ("干练精神，很有型", "立体挺括，提升整体的精致度"),
        "立领": ("挺括有型，衬得脖颈修长", "带着几分利落的帅气"),
        "高领": ("保暖又显气质", "修饰颈部，尽显端庄"),
        "半高领": ("温暖又不会勒脖子", "恰到好处地修饰颈部线条"),
        "连帽": ("随性自在，还能挡风保暖", "活力减龄，充满青春气息"),
        "娃娃领": ("可爱俏皮，满满的减龄感", "乖巧灵动，衬得脸蛋更精致"),
        "方领": ("露出漂亮的锁骨，很有法式风情", "修饰肩颈线条，显得脖子更修长"),
        "一字领": ("展现迷人的肩部线条", "露肤得恰到好处，很有女人味"),
        "西装领": ("干练利落，气场十足", "挺括有型，尽显职场精英范儿"),
        "荷叶领": ("层次丰富，灵动又俏皮", "浪漫可爱，很有少女感"),
    },
    "袖型": {
        "泡泡袖": ("蓬松可爱，修饰手臂线条", "带着浓浓的宫廷感"),
        "落肩袖": ("慵懒随性，弱化了肩部线条", "随性感十足，修饰肩型"),
        "灯笼袖": ("袖口收紧，俏皮又有型", "蓬松立体，增添几分浪漫"),
        "喇叭袖": ("袖口自然散开，灵动飘逸", "大方灵动，很有女人味"),
        "蝙蝠袖": ("宽大舒适，遮肉效果一流", "个性十足，活动起来毫无束缚"),
        "插肩袖": ("线条流畅，动感十足", "不挑肩型，穿着更加自在"),
        "荷叶袖": ("层叠飘逸，灵动又俏皮", "遮住手臂的小肉肉，显得纤细"),
        "常规袖": ("简洁利落，穿着舒适", "经典不出错，百搭实用"),
    },
    "袖长": {
        "长袖": ("春秋穿着刚刚好", "遮住手臂，更显利落"),
        "短袖": ("清凉透气，适合炎热的夏天", "露出手臂，显得干净利落"),
        "七分袖": ("露出纤细的手腕，显得大方", "长短适中，春夏都能穿"),
        "五分袖": ("遮住上臂，清爽又利落", "长度刚好，穿着很舒服"),
        "无袖": ("清凉舒适，展现手臂线条", "简洁大方，内搭外穿皆可"),
    },
    "衣长": {
        "短款": ("提高腰线，拉长下半身比例", "利落精神，显得个子更高"),
        "中长款": ("遮住臀部，修饰身形", "长度适中，温暖又大气"),
        "常规款": ("长度适中，怎么穿都合适", "不挑身材，日常穿着很方便"),
        "长款": ("气场十足，保暖性也更好", "垂坠感强，显得人更加修长"),
    },
    "款式": {
        "破洞": ("随性不羁，带着做旧的潮流感", "打破沉闷，很有个性"),
        "口袋": ("实用又美观，方便收纳小物件", "增添了层次感，还很实用"),
        "拼接": ("丰富了视觉层次，很有设计感", "打破单调，显得别出心裁"),
        "纽扣": ("精致小巧，提升细节质感", "穿脱方便，也增添了几分讲究"),
        "系带": ("可以随意调节松紧，灵活又俏皮", "增添了几分灵动感"),
        "抽绳": ("可以调节松紧，随性又实用", "自然随意，实用又好看"),
        "拉链": ("穿脱方便，利落又帅气", "增添了几分酷感"),
        "荷叶边": ("层叠飘逸，浪漫又灵动", "俏皮可爱，满满的少女感"),
        "木耳边": ("精致柔美，增添温柔气息", "可爱灵动，细节感十足"),
        "露肩": ("展露迷人肩线，大方又不过分", "端庄中带着小心机"),
        "开叉": ("行走间若隐若现，更显灵动", "打破沉闷，增添几分随性"),
        "蝴蝶结": ("俏皮可爱，满满的减龄感", "灵动娇俏，让人心动"),
        "镂空": ("若隐若现，透气又迷人", "精致通透，增添了设计感"),
        "褶皱": ("立体有层次，修饰身形", "增添了慵懒的随性感"),
        "腰带": ("凸显纤细腰身，提升整体比例", "精致又实用，增添层次感"),
        "抽褶": ("营造出蓬松的立体感", "自然垂坠，温柔又灵动"),
        "不规则": ("打破常规，时髦又个性", "灵动随性，很有设计感"),
        "毛边": ("随性自然，带着做旧的味道", "打破常规，很有潮流感"),
        "卷边": ("露出脚踝，显得利落又随性", "随性感十足，很有少年气"),
    },
    "腰型": {
        "高腰": ("提高腰线，轻松拉长腿部比例", "显高显瘦，小个子也能驾驭"),
        "中腰": ("穿着舒适，不挑身材", "腰线位置恰到好处，日常百搭"),
        "松紧腰": ("贴合腰部不勒人，穿脱方便", "弹性十足，吃饱饭也不会紧绷"),
        "低腰": ("洒脱随意，带着几分慵懒", "个性十足，很有潮流感"),
    },
    "裙型": {
        "A字裙": ("遮住胯部和大腿，显瘦效果很好", "裙摆自然散开，显得俏皮灵动"),
        "百褶裙": ("褶皱细密规整，走动间很有韵律感", "青春减龄，活力满满"),
        "包臀裙": ("勾勒出迷人的臀部曲线", "修身贴合，尽显曼妙身姿"),
        "鱼尾裙": ("裙摆如鱼尾般展开，灵动又大方", "凸显曼妙曲线，女人味十足"),
        "伞裙": ("裙摆蓬松有型，少女感满满", "走动间裙摆飞扬，俏皮可爱"),
        "直筒裙": ("线条干净利落，大方得体", "不挑身材，穿着很显干练"),
        "蛋糕裙": ("层层叠叠，浪漫又可爱", "层次丰富，非常减龄"),
        "吊带裙": ("露出精致的肩颈线条", "清凉迷人，夏日必备"),
        "衬衫裙": ("干练又不失温柔", "一件就能穿出好气质"),
        "背带裙": ("减龄又俏皮，活力满满", "青春可爱，充满朝气"),
    },
    "裤型": {
        "阔腿裤": ("走路带风，气场十足", "宽大的裤管遮住腿部线条，显高又显瘦"),
        "直筒裤": ("线条笔直利落，修饰腿型", "不挑腿型，百搭实用"),
        "哈伦裤": ("裆部宽大，活动起来十分自在", "随性不羁，很有个性"),
        "锥形裤": ("上宽下窄，修饰腿型很有一套", "利落干练，上班穿也合适"),
        "小脚裤": ("紧贴腿部，展现纤细的腿部线条", "收身效果好，搭配短靴很好看"),
        "喇叭裤": ("摩登又时髦，拉长腿部比例", "微喇的裤脚修饰小腿，显腿长"),
        "工装裤": ("帅气有型，很有机能感", "硬朗利落，实用又酷"),
        "背带裤": ("可爱又减龄，少女感十足", "俏皮灵动，充满朝气"),
        "烟管裤": ("笔直利落，很有气场", "收身效果好，怎么穿都精神"),
    },
    "裤长": {
        "九分裤": ("露出纤细的脚踝，显高又利落", "长度刚刚好，搭配各种鞋子都合适"),
        "七分裤": ("清爽利落，夏天穿很凉快", "露出小腿，显得轻盈灵动"),
        "五分裤": ("活动自如，清凉又舒适", "随性自在，居家出街都合适"),
        "短裤": ("清凉透气，展现腿部线条", "活力十足，夏日必备"),
        "长裤": ("包裹双腿，保暖又显高", "修饰腿型，显得腿更长"),
    },
}
COLORS, STYLES, PATTERNS = tuple(NOTES["颜色"]), tuple(NOTES["风格"]), tuple(NOTES["图案"])

OPENINGS = (
    "这款{noun}，{hook}。", "推荐这款{noun}，{hook}。", "今年很受欢迎的{noun}，{hook}。",
    "日常百搭的{noun}，{hook}。", "衣橱里必备的{noun}，{hook}。", "一件有心机的{noun}，{hook}。",
    "质感满分的{noun}，{hook}。", "这一款{noun}，{hook}。", "想要轻松出门，这款{noun}就很合适，{hook}。",
)
STYLED_OPENINGS = (  # used when the row has exactly one 风格; {note} is that style's note
    "{v}风的{noun}，{note}。", "这款{noun}走{v}路线，{note}。", "充满{v}气息的一款{noun}，{note}。",
    "想要穿出{v}范儿，这款{noun}一定不能错过，{note}。",
)
HOOKS = (
    "设计简洁却很有看点", "细节满满，上身效果非常出彩", "穿起来舒适又好看", "兼顾了舒适与时髦",
    "出街约会都很合适", "每一处细节都经过精心打磨", "上身就能感受到满满的用心",
    "耐看又好穿，让人一眼就心动", "简单一件就能穿出好状态", "轻松穿出自己的小态度",
)
CONNECTORS = ("此外，", "同时，", "另外，", "值得一提的是，", "不仅如此，")
CLOSINGS_ANY = (
    "无论是日常出街还是约会，都能轻松驾驭。", "穿上它，轻松成为人群中的焦点。", "舒适与颜值兼备，值得入手。",
    "简单一穿就很有范儿。", "让你每天都能美美出门。", "喜欢的小仙女千万不要错过！",
    "实穿度很高，是衣橱里不可缺少的单品。",
)
CLOSINGS = {
    "上衣": ("搭配牛仔裤或半身裙都很好看。", "下身随意搭条裤子就能出门。", "单穿或者叠穿都很有味道。"),
    "裙": ("搭配一双小白鞋，轻盈又减龄。", "外面加件小外套，春秋也能穿。", "搭配高跟鞋，气质瞬间提升。"),
    "裤": ("搭配简单的T恤或衬衫就很出彩。", "上身配件宽大的卫衣，随性又时髦。", "搭配小白鞋或者短靴都很合适。"),
}

# ---------------------------------------------------------------------------------------------
# Products: attributes plus the ad copy written from them.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Product:
    """One drawn product: its kind (类型), ordered attributes, the noun the copy uses, the copy."""

    kind: str
    attrs: Attrs
    noun: str
    summary: str

    @property
    def content(self) -> str:
        """ADGEN's attribute string: ``key#value`` pairs joined by ``*`` (repeated keys allowed)."""
        return "*".join(f"{key}#{value}" for key, values in self.attrs.items() for value in values)


def _pick(options: dict[str, tuple[str, ...]], low: int, high: int, rng: random.Random) -> Attrs:
    """Choose ``low``..``high`` of the optional keys and one value for each."""
    keys = rng.sample(list(options), min(len(options), rng.randint(low, high)))
    return {key: [rng.choice(options[key])] for key in keys}


def _top_attrs(rng: random.Random) -> tuple[Attrs, tuple[str, ...]]:
    """Type-specific attributes of a top, and the materials that garment comes in."""
    garment = rng.choice(tuple(TOP_GARMENTS)) if rng.random() < 0.8 else None
    materials, collars = TOP_GARMENTS.get(garment, (TOP_MATERIALS, TOP_COLLARS))
    attrs: Attrs = {"衣样式": [garment]} if garment else {}
    if len(materials) == 1:
        attrs["材质"] = list(materials)  # 雪纺衫 names its material, so the row must say it too
    sleeve_lengths = OUTERWEAR_SLEEVE_LENGTHS if garment in OUTERWEAR else SLEEVE_LENGTHS
    options = {"衣领型": collars, "袖长": sleeve_lengths, "衣袖型": TOP_SLEEVES, "衣长": TOP_LENGTHS,
               "衣款式": TOP_DETAILS}
    attrs.update(_pick(options, 1, 2, rng))
    if attrs.get("袖长") == ["无袖"]:
        attrs.pop("衣袖型", None)  # a sleeveless top has no sleeve shape
    return attrs, materials


def _skirt_attrs(rng: random.Random) -> tuple[Attrs, tuple[str, ...]]:
    """Type-specific attributes of a skirt or dress; it always has 裙长 or 裙型 to name it."""
    length = rng.choice(SKIRT_LENGTHS) if rng.random() < 0.85 else None
    attrs: Attrs = {"裙长": [length]} if length else {}
    shape = None
    if length is None or rng.random() < 0.5:
        one_piece = length is None or length in DRESS_LENGTHS
        shape = rng.choice(SKIRT_SHAPES + DRESS_SHAPES if one_piece else SKIRT_SHAPES)
        attrs["裙型"] = [shape]
    options = {"裙款式": SKIRT_DETAILS, "裙腰型": SKIRT_WAISTS}
    if length == "连衣裙":
        options["裙领型"] = DRESS_COLLARS
        if shape != "吊带裙":  # straps, no sleeves
            options["裙袖型"] = DRESS_SLEEVES
    attrs.update(_pick(options, 1, 2, rng))
    return attrs, SKIRT_MATERIALS


def _pants_attrs(rng: random.Random) -> tuple[Attrs, tuple[str, ...]]:
    """Type-specific attributes of trousers; they always have 裤型 or 裤长 to name them."""
    shape = rng.choice(tuple(PANTS_SHAPES)) if rng.random() < 0.75 else None
    attrs: Attrs = {"裤型": [shape]} if shape else {}
    if shape is None or rng.random() < 0.4:
        attrs["裤长"] = [rng.choice(PANTS_SHAPES[shape] if shape else PANTS_LENGTHS)]
    attrs.update(_pick({"裤款式": PANTS_DETAILS, "裤腰型": PANTS_WAISTS}, 1, 2, rng))
    return attrs, PANTS_MATERIALS


KIND_ATTRS: dict[str, Callable[[random.Random], tuple[Attrs, tuple[str, ...]]]] = {
    "上衣": _top_attrs, "裙": _skirt_attrs, "裤": _pants_attrs,
}


def _draw_attrs(rng: random.Random) -> tuple[str, Attrs]:
    """Draw a kind and its attributes: 1-4 shared keys plus the kind's own, in ADGEN key order."""
    kind = rng.choices(KINDS, weights=KIND_WEIGHTS)[0]
    attrs, materials = KIND_ATTRS[kind](rng)
    shared = {"版型": FITS[kind], "材质": materials, "颜色": COLORS, "风格": STYLES, "图案": PATTERNS}
    for key in rng.sample(list(shared), rng.choice((1, 2, 2, 3, 3, 4))):
        two = key in ("风格", "图案") and rng.random() < 0.2  # ADGEN repeats these keys
        attrs[key] = rng.sample(shared[key], 2 if two else 1)
    attrs["类型"] = [kind]
    return kind, {key: attrs[key] for key in KEY_ORDER if key in attrs}


def _note(key: str, value: str, rng: random.Random) -> str:
    return rng.choice(NOTES[KEY_BANK[key]][value])


def _clause(key: str, values: list[str], part: str, used: set[str], rng: random.Random) -> str:
    """One comma-joined clause naming the value(s) of ``key``; two values share the first's note.

    Templates in ``used`` (updated) are avoided where the bank has another, so a paragraph does
    not say "……的设计" three times.
    """
    templates = TEMPLATES[KEY_BANK[key]]
    template = rng.choice([t for t in templates if t not in used] or templates)
    used.add(template)
    return template.format(v="和".join(values), note=_note(key, values[0], rng), part=part)


def _opening(noun_key: str, attrs: Attrs, rng: random.Random) -> tuple[str, bool]:
    """The first sentence, naming the product; True when it already covered the row's 风格."""
    noun = attrs[noun_key][0]
    styles = attrs.get("风格", [])
    if len(styles) == 1 and rng.random() < 0.5:
        note = _note("风格", styles[0], rng)
        return rng.choice(STYLED_OPENINGS).format(noun=noun, v=styles[0], note=note), True
    if noun_key in KEY_BANK and rng.random() < 0.5:
        hook = _note(noun_key, noun, rng)  # say what the shape (阔腿裤, A字裙...) does
    else:
        hook = rng.choice(HOOKS)
    return rng.choice(OPENINGS).format(noun=noun, hook=hook), False


def _join_clauses(clauses: list[str], rng: random.Random) -> str:
    """Group clauses into sentences of one or two; later sentences may open with a connector."""
    connectors = list(CONNECTORS)
    rng.shuffle(connectors)
    sentences: list[str] = []
    i = 0
    while i < len(clauses):
        size = 2 if i + 1 < len(clauses) and rng.random() < 0.4 else 1
        sentence = "，".join(clauses[i : i + size]) + "。"
        if sentences and rng.random() < 0.3:
            sentence = connectors.pop() + sentence  # each connector at most once per paragraph
        sentences.append(sentence)
        i += size
    return "".join(sentences)


def _summary(kind: str, attrs: Attrs, noun_key: str, rng: random.Random) -> str:
    """Ad copy: opening, one clause per remaining attribute, and usually a closing line."""
    opening, covered_style = _opening(noun_key, attrs, rng)
    skip = {"类型", noun_key} | ({"风格"} if covered_style else set())
    used: set[str] = set()
    clauses = [_clause(key, values, PARTS[kind], used, rng)
               for key, values in attrs.items() if key not in skip]
    closing = rng.choice(CLOSINGS[kind] + CLOSINGS_ANY) if rng.random() < 0.75 else ""
    return opening + _join_clauses(clauses, rng) + closing


def _draw_product(rng: random.Random) -> Product:
    """Draw a product whose copy length lies within ``SUMMARY_MIN``..``SUMMARY_MAX``."""
    while True:  # the few drawn products with too many or too few attributes are redrawn
        kind, attrs = _draw_attrs(rng)
        noun_key = next(key for key in NOUN_KEYS[kind] if key in attrs)
        summary = _summary(kind, attrs, noun_key, rng)
        if SUMMARY_MIN <= len(summary) <= SUMMARY_MAX:
            return Product(kind, attrs, attrs[noun_key][0], summary)


def _draw_unique(
    draw: Callable[[random.Random], T],
    rng: random.Random,
    key: Callable[[T], Hashable],
    seen: set[Hashable],
) -> T:
    """Draw until the item's key is new, then record it in ``seen``."""
    for _ in range(_MAX_TRIES):
        item = draw(rng)
        if key(item) not in seen:
            seen.add(key(item))
            return item
    raise RuntimeError(f"phrase banks too small: no new item in {_MAX_TRIES} draws")


def _adgen_row(rng: random.Random) -> Row:
    product = _draw_product(rng)
    return {"content": product.content, "summary": product.summary}


def _adgen_rows(n: int, rng: random.Random, seen: set[Hashable]) -> list[Row]:
    """``n`` ADGEN rows whose content is not in ``seen`` (updated)."""
    return [_draw_unique(_adgen_row, rng, lambda row: row["content"], seen) for _ in range(n)]


def generate_adgen_rows(n: int, seed: int) -> list[dict[str, str]]:
    """Return ``n`` ADGEN-style rows ``{"content", "summary"}`` with distinct contents.

    The same ``seed`` always gives the same rows.
    """
    return _adgen_rows(n, random.Random(seed), set())


# ---------------------------------------------------------------------------------------------
# Alpaca-style instruction rows. Most tasks reuse a drawn product; the rest are clothing
# knowledge questions with an empty input.
# ---------------------------------------------------------------------------------------------

CATEGORY_NAMES = {"上衣": "上衣", "裙": "裙子", "裤": "裤子"}
EXTRACTABLE = ("颜色", "材质", "风格", "图案", "版型")
POINT_FORMATS = {"版型": "{v}版型", "材质": "{v}面料", "颜色": "{v}配色", "风格": "{v}风格", "图案": "{v}图案",
                 "衣款式": "{v}细节", "裙款式": "{v}细节", "裤款式": "{v}细节", "裙型": "{v}版型", "裤长": "{v}长度"}
AD_COPY_INSTRUCTIONS = (
    "根据下面的商品属性，写一段广告文案。", "请为这件商品写一段吸引人的推广文案，商品信息如下。",
    "你是一名服装电商文案，请根据属性写一段商品介绍。", "把下面的商品属性扩写成一段通顺的广告语。",
)
TYPE_INSTRUCTIONS = ("判断下面的商品文案介绍的是上衣、裙子还是裤子。", "下面这段文案卖的是哪一类服装？从上衣、裙子、裤子中选一个。")
STYLE_INSTRUCTIONS = ("下面这段文案体现了哪种服装风格？", "读下面的商品介绍，说出它的风格。")
TITLE_INSTRUCTIONS = ("为下面的商品文案起一个简短的标题。", "给这段商品介绍拟一个标题，不超过十五个字。")
POINTS_INSTRUCTIONS = ("用一句话概括下面这段文案的卖点。", "这段商品文案主要突出了哪些卖点？请简要回答。")
REWRITE_INSTRUCTIONS = ("把下面这句话改写得简洁一些。", "请精简下面的句子，保留原意。", "去掉下面句子里的口语化表达，让它更像商品文案。")
SLOGAN_INSTRUCTIONS = ("根据商品信息写一句宣传口号。", "为下面的商品写一句简短有力的广告语。")
TITLE_TAGS = ("舒适百搭", "日常必备", "轻松穿出好气质", "时髦不费力", "穿出好状态", "一穿就爱上", "简约耐看", "温柔又有态度")
SLOGAN_TAGS = (
    "穿出你的好气质", "舒适自在每一天", "简单也可以很出彩", "让美丽不费力", "一穿就爱上", "轻松穿出高级感",
    "做自信的自己", "日常也要精致", "从容走过每个季节", "温柔又有态度",
)
SLOGAN_TEMPLATES = ("{lead}{noun}，{tag}！", "一件{lead}{noun}，{tag}。", "穿上{lead}{noun}，{tag}。")
# Wordy sentence -> the concise copy it should become; {v} is the value, {note} its note.
REWRITE_PAIRS = {
    "材质": (
        ("这件{noun}的话呢，它用的是{v}的面料，所以说穿在身上{note}，整体来说是非常不错的。", "这件{noun}采用{v}面料，{note}。"),
        ("说实话，我们家这款{noun}选的面料是{v}，穿起来真的是{note}，大家可以放心入手。", "{v}面料的{noun}，{note}，放心入手。"),
    ),
    "颜色": (
        ("我们这款{noun}它的颜色是{v}的，这个颜色的话呢，{note}，真的是非常好看的。", "{v}的{noun}，{note}。"),
        ("如果你问我这款{noun}哪里最好看，我会说是它的{v}，因为{note}。", "这款{noun}最出彩的是{v}，{note}。"),
    ),
}
CARE_QUESTIONS = ("{m}材质的衣服应该怎么洗？", "{m}衣物怎么保养才能穿得更久？", "洗{m}面料的衣服要注意什么？")
CARE_TIPS = {
    "纯棉": ("水温最好控制在30度以下，避免缩水", "深色和浅色衣物分开洗，防止串色", "晾晒时把衣服翻面，避免阳光直射导致褪色",
           "不要长时间浸泡，洗好后及时晾干"),
    "针织": ("最好放进洗衣袋用轻柔模式清洗", "不要用力拧干，轻轻按压出水分即可", "晾干时平铺，避免挂着拉长变形",
           "收纳时叠放，不要用衣架长期悬挂"),
    "雪纺": ("建议用冷水轻柔手洗", "不要用力搓洗，以免面料起毛抽丝", "洗后直接挂起阴干，不需要拧干", "熨烫时用低温并隔一层布"),
    "牛仔布": ("第一次洗可以加一点盐或白醋，减少掉色", "把衣服翻面后再洗，保护表面颜色", "尽量用冷水洗，不要用漂白剂",
            "不必频繁洗涤，穿几次再洗更耐穿"),
    "亚麻": ("用冷水或温水轻柔手洗", "亚麻容易起皱，洗后趁湿整理平整再晾", "避免暴晒，放在通风处阴干", "需要熨烫时用中温蒸汽熨斗"),
    "蕾丝": ("最好手洗，并装在洗衣袋里", "不要揉搓和拧干，以免花纹变形", "晾干时平铺或轻轻挂起", "收纳时远离容易钩挂的饰品"),
    "真丝": ("使用真丝专用洗涤剂，用冷水手洗", "洗涤时间不宜过长，轻轻揉洗即可", "洗后用毛巾吸干水分，放在阴凉处晾干",
           "避免阳光暴晒，否则容易发黄"),
    "羊毛": ("建议干洗，或者用羊毛专用洗涤剂冷水手洗", "不要搓洗和用力拧，以免缩水毡化", "平铺晾干，避免悬挂变形",
           "收纳时放入防虫用品，防止虫蛀"),
    "灯芯绒": ("翻面后冷水洗涤，保护绒条", "不要用力刷洗，以免绒毛倒伏", "晾干后用软毛刷顺着绒条轻刷", "避免高温熨烫，可以用蒸汽轻熨"),
    "丝绒": ("最好送去专业干洗", "如需手洗，用冷水轻轻按压，不要揉搓", "晾干时不要拧，让它自然滴干", "收纳时悬挂，避免重压留下折痕"),
}
MATCH_QUESTIONS = ("{c}的{noun}应该怎么搭配？", "请给一些{c}{noun}的穿搭建议。", "{c}{noun}配什么好看？")
MATCH_TIPS = {
    "上衣": ("下身搭配一条直筒牛仔裤，简单利落", "搭配高腰半身裙，显得温柔又有女人味", "配一条阔腿裤，随性中带着几分帅气",
           "外面加一件西装外套，上班穿也很得体", "鞋子可以选小白鞋或者乐福鞋，舒适又百搭"),
    "裙": ("外面叠穿一件短款开衫或牛仔外套", "腰间系一条细腰带，提升身材比例", "搭配一双小白鞋，轻盈又减龄",
          "配上高跟鞋和小手包，适合约会和聚会", "秋冬可以搭配长靴和大衣"),
    "裤": ("上身搭配一件简单的T恤，清爽干净", "配一件短款针织衫，拉长腿部比例", "搭一件衬衫并把下摆塞进裤腰，干练又利落",
          "外面加一件风衣，上班出游都合适", "鞋子可以选运动鞋或者乐福鞋"),
}
INTRO_QUESTIONS = ("介绍一下{x}的特点。", "{x}有什么优点？", "说说{x}的设计好在哪里。")
INTRO_BANKS = ("领型", "袖型", "裙型", "裤型")
SEASON_QUESTIONS = ("{s}适合穿什么面料的衣服？", "推荐几种适合{s}的服装面料。", "{s}买衣服应该选什么材质？")
SEASON_MATERIALS = {
    "春天": ("纯棉", "针织", "牛仔布", "天丝"), "夏天": ("纯棉", "亚麻", "雪纺", "真丝", "天丝"),
    "秋天": ("针织", "灯芯绒", "牛仔布", "羊毛"), "冬天": ("羊毛", "灯芯绒", "丝绒", "针织"),
}


def _zh_list(items: list[str]) -> str:
    """Join as Chinese prose: ``A``, ``A和B``, ``A、B和C``."""
    return items[0] if len(items) == 1 else "、".join(items[:-1]) + "和" + items[-1]


def _row(instruction: str, input_text: str, output: str) -> Row:
    return {"instruction": instruction, "input": input_text, "output": output}


def _readable(attrs: Attrs) -> str:
    return "；".join(f"{key}：{'、'.join(values)}" for key, values in attrs.items())


def _points(product: Product) -> list[str]:
    """Selling points of the product, e.g. ``宽松版型``; the kind and its noun are not points."""
    return [POINT_FORMATS.get(key, "{v}设计").format(v=value)
            for key, values in product.attrs.items() if key != "类型"
            for value in values if value != product.noun]


def _lead(product: Product, rng: random.Random) -> str:
    """A single colour, material or style to put before the noun (``纯棉衬衫``), or ``""``."""
    options = [values[0] for key, values in product.attrs.items()
               if key in ("颜色", "材质", "风格") and len(values) == 1]
    options = [value for value in options if value[:2] not in product.noun]  # no 雪纺雪纺衫
    return rng.choice(options) if options else ""


def _product_with(key: str, rng: random.Random) -> Product:
    """Draw products until one has ``key``."""
    while True:
        product = _draw_product(rng)
        if key in product.attrs:
            return product


def _task_ad_copy(rng: random.Random) -> Row:
    product = _draw_product(rng)
    attributes = product.content if rng.random() < 0.5 else _readable(product.attrs)
    return _row(rng.choice(AD_COPY_INSTRUCTIONS), attributes, product.summary)


def _task_extract(rng: random.Random) -> Row:
    product = _draw_product(rng)
    present = [key for key in EXTRACTABLE if key in product.attrs]
    keys = rng.sample(present, min(len(present), rng.randint(1, 2)))
    answer = "；".join(f"{key}：{'、'.join(product.attrs[key])}" for key in keys)
    return _row(f"找出下面这段商品文案中提到的{_zh_list(keys)}。", product.summary, answer + "。")


def _task_category(rng: random.Random) -> Row:
    product = _draw_product(rng)
    answer = f"{CATEGORY_NAMES[product.kind]}。这段文案介绍的是一款{product.noun}。"
    return _row(rng.choice(TYPE_INSTRUCTIONS), product.summary, answer)


def _task_style(rng: random.Random) -> Row:
    product = _product_with("风格", rng)
    answer = f"这段文案体现的是{_zh_list(product.attrs['风格'])}风格。"
    return _row(rng.choice(STYLE_INSTRUCTIONS), product.summary, answer)


def _task_title(rng: random.Random) -> Row:
    product = _draw_product(rng)
    title = f"{_lead(product, rng)}{product.noun}，{rng.choice(TITLE_TAGS)}"
    return _row(rng.choice(TITLE_INSTRUCTIONS), product.summary, title)


def _task_points(rng: random.Random) -> Row:
    product = _draw_product(rng)
    answer = f"这是一款{product.noun}，主打{_zh_list(_points(product)[:3])}。"
    return _row(rng.choice(POINTS_INSTRUCTIONS), product.summary, answer)


def _task_rewrite(rng: random.Random) -> Row:
    key = rng.choice(tuple(REWRITE_PAIRS))
    product = _product_with(key, rng)
    value = product.attrs[key][0]
    wordy, concise = rng.choice(REWRITE_PAIRS[key])
    fill = {"noun": product.noun, "v": value, "note": _note(key, value, rng)}
    return _row(rng.choice(REWRITE_INSTRUCTIONS), wordy.format(**fill), concise.format(**fill))


def _slogan(product: Product, lead: str, rng: random.Random) -> str:
    template = rng.choice(SLOGAN_TEMPLATES)
    return template.format(lead=lead, noun=product.noun, tag=rng.choice(SLOGAN_TAGS))


def _task_slogan(rng: random.Random) -> Row:
    product = _draw_product(rng)
    lead = _lead(product, rng)
    info = f"商品：{product.noun}\n卖点：{'、'.join(_points(product))}"
    return _row(rng.choice(SLOGAN_INSTRUCTIONS), info, _slogan(product, lead, rng))


def _task_slogan_free(rng: random.Random) -> Row:
    product = _draw_product(rng)
    lead = _lead(product, rng)
    return _row(f"为一款{lead}{product.noun}写一句宣传口号。", "", _slogan(product, lead, rng))


def _task_care(rng: random.Random) -> Row:
    material = rng.choice(tuple(CARE_TIPS))
    chosen = set(rng.sample(CARE_TIPS[material], rng.randint(2, 4)))
    tips = [tip for tip in CARE_TIPS[material] if tip in chosen]  # banks run wash, dry, store
    steps = "\n".join(f"{i}. {tip}。" for i, tip in enumerate(tips, 1))
    answer = f"洗护{material}衣物可以注意以下几点：\n{steps}"
    return _row(rng.choice(CARE_QUESTIONS).format(m=material), "", answer)


def _task_match(rng: random.Random) -> Row:
    product = _draw_product(rng)
    color = rng.choice(COLORS[:-1])  # every colour but 纯色, which is no colour to dress around
    first, second = rng.sample(MATCH_TIPS[product.kind], 2)
    answer = f"{color}{_note('颜色', color, rng)}。搭配上可以这样考虑：{first}；{second}。"
    return _row(rng.choice(MATCH_QUESTIONS).format(c=color, noun=product.noun), "", answer)


def _task_intro(rng: random.Random) -> Row:
    notes = NOTES[rng.choice(INTRO_BANKS)]
    name = rng.choice(tuple(notes))
    answer = f"{name}{'，'.join(rng.sample(notes[name], 2))}。"
    return _row(rng.choice(INTRO_QUESTIONS).format(x=name), "", answer)


def _task_season(rng: random.Random) -> Row:
    season = rng.choice(tuple(SEASON_MATERIALS))
    materials = rng.sample(SEASON_MATERIALS[season], 3)
    lines = "\n".join(f"{i}. {m}：{_note('材质', m, rng)}。" for i, m in enumerate(materials, 1))
    return _row(rng.choice(SEASON_QUESTIONS).format(s=season), "", f"{season}推荐以下几种面料：\n{lines}")


INPUT_TASKS = (  # ad copy twice: it is the skill the sample data is about
    _task_ad_copy, _task_ad_copy, _task_extract, _task_category, _task_style, _task_title,
    _task_points, _task_rewrite, _task_slogan,
)
NO_INPUT_TASKS = (_task_slogan_free, _task_care, _task_match, _task_intro, _task_season)


def _any_task(tasks: tuple[Callable[[random.Random], Row], ...], rng: random.Random) -> Row:
    return rng.choice(tasks)(rng)


def _alpaca_rows(n: int, rng: random.Random, seen: set[Hashable]) -> list[Row]:
    """``n`` Alpaca rows, exactly ``n // 3`` with an empty input, none whose
    (instruction, input) is in ``seen`` (updated)."""
    empty = [True] * (n // 3) + [False] * (n - n // 3)
    rng.shuffle(empty)
    rows = []
    for no_input in empty:
        draw = partial(_any_task, NO_INPUT_TASKS if no_input else INPUT_TASKS)
        rows.append(_draw_unique(draw, rng, lambda row: (row["instruction"], row["input"]), seen))
    return rows


def generate_alpaca_rows(n: int, seed: int) -> list[dict[str, str]]:
    """Return ``n`` Chinese Alpaca rows ``{"instruction", "input", "output"}``; a third of them
    (``n // 3``) have an empty input. The same ``seed`` always gives the same rows."""
    return _alpaca_rows(n, random.Random(seed), set())


# ---------------------------------------------------------------------------------------------
# Sample files.
# ---------------------------------------------------------------------------------------------


def sample_splits() -> dict[str, list[Row]]:
    """Rows of the sample files, keyed by path under ``--out_dir`` (``adgen/train.json``...).

    Train comes from ``generate_*_rows(size, train_seed)``; dev uses its own seed and skips any
    row whose content (ADGEN) or instruction and input (Alpaca) already is in train.
    """
    makers = {"adgen": _adgen_rows, "alpaca": _alpaca_rows}
    splits: dict[str, list[Row]] = {}
    for dataset, make_rows in makers.items():
        seen: set[Hashable] = set()
        for split in ("train", "dev"):
            rng = random.Random(SAMPLE_SEEDS[dataset][split])
            splits[f"{dataset}/{split}.json"] = make_rows(SAMPLE_SIZES[dataset][split], rng, seen)
    return splits


def render(relpath: str, rows: list[Row]) -> str:
    """File text: JSON Lines for ADGEN (its own format), a JSON array for Alpaca (likewise)."""
    if relpath.startswith("alpaca/"):
        return json.dumps(rows, ensure_ascii=False, indent=1) + "\n"
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def sample_files() -> dict[str, str]:
    """Text of every sample file, keyed by path under ``--out_dir``."""
    return {relpath: render(relpath, rows) for relpath, rows in sample_splits().items()}


def main() -> None:
    """Write the sample files under ``--out_dir`` and say what was written."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out_dir", default="data", help="where adgen/ and alpaca/ are written")
    args = parser.parse_args()
    for relpath, rows in sample_splits().items():
        path = Path(args.out_dir) / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render(relpath, rows), encoding="utf-8")
        print(f"wrote {len(rows)} rows to {path}")


if __name__ == "__main__":
    main()

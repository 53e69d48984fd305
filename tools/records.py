"""Structured records about things other than clothing, written by the project for pretraining.

A record is a header of key/value pairs followed, on the next line, by a short text that names
every value of the header::

    类型：沙发；颜色：卡其色；材质：丝绒；风格：复古
    这款沙发，选用卡其色，低调耐看。丝绒材质，触感细腻，透着复古的味道。

The embedded model learns from these the general skill that a prefix later points at a new
domain: read a header, then write a text that mentions its values, in any order and in varied
phrasing. Two kinds of records:

* goods for the home and the desk (sofas, curtains, mugs, lamps...): short product texts, so the
  base knows the register of colours, materials, styles and patterns, but nothing is clothing;
* foods, cities, animals, tools, books, plants, drinks and short scenes.

Headers are written ``键：值；键：值``, ``【键】值【键】值``, ``键:值,键:值`` or ``键=值 键=值``, and with
``symbol_share`` now and then with two separators drawn for that record (``键|值/键|值``, ``键～值、键～值``...),
never in ADGEN's ``键#值*键#值``:
reading that layout, the chat template and the clothing domain is what P-tuning has to teach
the base (``scripts/demo.sh``), and what the base without a prefix cannot do. A share of the
values (``open_share``) comes from a word list (jionlp's word dictionary, when installed), so
copying a value the model has never seen in a header is part of the skill. With ``generic_share``,
a clause now and then says its value in a phrasing that fits any key (``{k}是{v}``, ``{v}的{k}``...),
and a record now and then carries an invented key (a dictionary word) said that way: the base
learns to name the value of a key it has no phrasing for, as ADGEN's ``裙款式`` or ``衣领型`` are to it.

The same ``seed`` always gives the same records (and the same word list gives the same records).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

HEADER_SEPARATOR = "\n"  # between a record's header and its text
HEADER_STYLES = ("colon", "bracket", "ascii", "equals")  # 键：值；键：值  【键】值【键】值  键:值,键:值  键=值 键=值
# The ``symbols`` layout: a key/value separator and a pair separator drawn per record from these, never
# ADGEN's ``#`` and ``*`` (nor their full-width forms). A base that has read headers in many layouts
# reads a new one from a few examples; ADGEN's is still one it has not seen.
SYMBOL_KEY_SEPARATORS = ":=|/-~>^@%&+!?｜／－～＞＝·→"
SYMBOL_PAIR_SEPARATORS = ",;|/ &+_~^!、；，｜／．·"


@dataclass(frozen=True)
class Kind:
    """One kind of thing: the key that names it, its nouns, and per key the values and phrasings.

    ``fields`` maps a key to ``(values, phrasings)``; a phrasing holds ``{v}`` where the value goes.
    Keys appear in the header in the order of ``fields``.
    """

    name: str
    noun_key: str
    nouns: tuple[str, ...]
    openings: tuple[str, ...]
    fields: dict[str, tuple[tuple[str, ...], tuple[str, ...]]]
    closings: tuple[str, ...] = field(default=())
    tails: tuple[str, ...] = field(default=())  # short remarks that may follow a clause (goods)
    remarks: tuple[str, ...] = field(default=())  # whole sentences that may follow a sentence (goods)
    category: bool = True  # the header starts with 类别#<name> (goods start with 类型, the noun)


GENERIC_OPENINGS = ("说起{noun}，", "今天聊聊{noun}。", "{noun}很有特点。", "这里介绍的是{noun}。", "{noun}，")
# Phrasings that fit any key: {k} the key, {v} the value(s).
GENERIC_PHRASINGS = ("{k}是{v}", "{k}为{v}", "{v}的{k}", "{k}上选了{v}", "说到{k}，是{v}", "{k}方面用的是{v}",
                     "带有{v}的{k}", "以{v}作为{k}", "{k}采用{v}", "{k}偏{v}")
CONNECTORS = ("此外，", "同时，", "另外，", "而且，", "值得一提的是，")

KINDS = (
    Kind(
        "食物", "菜名",
        ("红烧肉", "麻婆豆腐", "小笼包", "酸菜鱼", "宫保鸡丁", "葱油饼", "牛肉面", "蛋炒饭", "糖醋排骨", "水煮鱼",
         "羊肉串", "桂花糕", "酸辣粉", "馄饨", "煎饺", "凉皮", "东坡肉", "白切鸡", "担担面", "过桥米线"),
        ("{noun}是一道家常美食。", "很多人都爱吃{noun}。", "{noun}做起来并不难。"),
        {
            "口味": (("麻辣", "清淡", "酸甜", "咸鲜", "香辣", "鲜香", "微甜", "酸辣"),
                     ("口味{v}", "吃起来{v}可口", "带着{v}的滋味", "味道偏{v}")),
            "主料": (("牛肉", "猪肉", "鸡肉", "豆腐", "鸡蛋", "面粉", "大米", "鲜鱼", "羊肉", "土豆", "虾仁"),
                     ("以{v}为主料", "选用新鲜的{v}", "{v}是其中的主角")),
            "做法": (("红烧", "清蒸", "爆炒", "凉拌", "慢炖", "油炸", "烤制", "水煮"),
                     ("采用{v}的做法", "经过{v}之后更入味", "用{v}的方式烹制")),
            "产地": (("四川", "广东", "江苏", "浙江", "湖南", "山东", "陕西", "云南", "北京", "福建"),
                     ("发源于{v}", "是{v}一带的家常味道", "在{v}十分常见")),
            "配菜": (("青菜", "香菜", "葱花", "花生", "辣椒", "木耳", "黄瓜", "豆芽"),
                     ("配上{v}", "撒一把{v}", "旁边放些{v}")),
        },
        ("趁热吃最好。", "一家人围坐着吃，格外香。", ""),
    ),
    Kind(
        "城市", "城市",
        ("杭州", "成都", "西安", "洛阳", "苏州", "大理", "桂林", "青岛", "厦门", "重庆", "南京", "长沙", "昆明",
         "扬州", "开封", "泉州", "绍兴", "敦煌"),
        ("{noun}是一座值得一去的城市。", "很多人向往{noun}。"),
        {
            "气候": (("四季分明", "温暖湿润", "干燥少雨", "冬冷夏热", "凉爽宜人"), ("气候{v}", "这里{v}")),
            "景点": (("古城墙", "湖泊", "寺庙", "古镇", "博物馆", "石窟", "园林", "雪山", "海滩", "老街"),
                     ("有著名的{v}", "可以去{v}走一走", "{v}吸引了许多游客")),
            "特产": (("茶叶", "丝绸", "瓷器", "米酒", "腊肉", "糕点", "药材", "水果"),
                     ("特产是{v}", "{v}远近闻名", "不妨带些{v}回去")),
            "季节": (("春天", "夏天", "秋天", "冬天"), ("最适合{v}去", "{v}的景色最美")),
            "交通": (("高铁", "地铁", "轮渡", "公交", "自行车"), ("乘坐{v}十分方便", "出行可以选择{v}")),
        },
        ("去过的人都说还想再去。", "这座城市让人流连忘返。", ""),
    ),
    Kind(
        "动物", "动物",
        ("熊猫", "老虎", "松鼠", "狐狸", "燕子", "海豚", "骆驼", "刺猬", "猫头鹰", "梅花鹿", "企鹅", "猴子",
         "兔子", "天鹅", "鲸鱼", "蜜蜂"),
        ("{noun}是一种可爱的动物。", "大家都见过{noun}吗？"),
        {
            "毛色": (("黑白", "棕色", "灰色", "金黄色", "白色", "红褐色"), ("身上是{v}的", "一身{v}的皮毛", "披着{v}的外衣")),
            "食物": (("竹子", "昆虫", "鱼虾", "果实", "青草", "花蜜", "树叶"), ("爱吃{v}", "以{v}为食", "常常寻找{v}")),
            "栖息地": (("森林", "草原", "山地", "湖边", "沙漠", "海洋", "竹林", "湿地"),
                       ("生活在{v}", "{v}是它的家", "常在{v}出没")),
            "体型": (("小巧", "中等", "庞大", "修长", "圆润"), ("体型{v}", "身材{v}")),
            "习性": (("夜行", "群居", "独居", "迁徙", "冬眠"), ("有{v}的习性", "习惯{v}")),
            "性格": (("温顺", "机警", "活泼", "胆小", "好奇"), ("性格{v}", "显得十分{v}")),
        },
        ("它是大自然的好朋友。", "我们要好好保护它。", ""),
    ),
    Kind(
        "工具", "工具",
        ("锤子", "扳手", "螺丝刀", "剪刀", "锯子", "卷尺", "钳子", "电钻", "铲子", "刨子", "斧头", "水平尺"),
        ("{noun}是家里常备的工具。", "干活离不开{noun}。"),
        {
            "材质": (("钢", "不锈钢", "铝合金", "木头", "塑料", "铸铁"), ("用{v}制成", "{v}材质结实耐用")),
            "用途": (("钉钉子", "拧螺丝", "剪纸", "测量长度", "切割木板", "修理水管", "挖土", "打孔"),
                     ("用来{v}", "{v}时少不了它", "可以轻松{v}")),
            "手感": (("轻便", "沉稳", "顺手", "舒适", "防滑"), ("手感{v}", "用起来{v}")),
            "颜色": (("红色", "黑色", "黄色", "蓝色", "银色", "绿色"), ("外观是{v}", "{v}的手柄很醒目")),
            "场合": (("家庭", "工地", "车间", "户外", "花园"), ("适合{v}使用", "在{v}里很常用")),
        },
        ("用完记得放回原处。", "买一把能用很多年。", ""),
    ),
    Kind(
        "书籍", "书名",
        tuple(f"《{w}{s}》" for w in ("山河", "远行", "旧梦", "星火", "归途", "长河", "青灯", "故园", "烟雨")
              for s in ("记", "传", "集", "录", "笔记")),
        ("{noun}是一本好书。", "推荐大家读一读{noun}。"),
        {
            "作者": (("张明", "李清", "王远", "刘青山", "陈晓", "赵小梅", "周文", "吴海"),
                     ("作者是{v}", "由{v}所写", "{v}写下了这本书")),
            "题材": (("小说", "散文", "诗集", "游记", "传记", "童话", "史书"), ("是一部{v}", "以{v}的形式写成")),
            "年代": (("唐代", "宋代", "明代", "清代", "民国", "现代"), ("写于{v}", "成书于{v}")),
            "主题": (("友情", "亲情", "成长", "战争", "旅行", "自然", "乡愁", "理想"),
                     ("讲述了关于{v}的故事", "围绕{v}展开", "主题是{v}")),
            "篇幅": (("短篇", "中篇", "长篇"), ("篇幅属于{v}", "是一部{v}作品")),
        },
        ("读完让人回味很久。", "值得反复阅读。", ""),
    ),
    Kind(
        "植物", "植物",
        ("梅花", "兰花", "竹子", "菊花", "荷花", "桂花", "牡丹", "银杏", "松树", "柳树", "茉莉", "杜鹃", "向日葵"),
        ("{noun}是人们喜爱的植物。", "院子里种着{noun}。"),
        {
            "花色": (("白色", "红色", "粉色", "紫色", "黄色", "淡绿色"), ("开{v}的花", "花朵呈{v}")),
            "花期": (("早春", "初夏", "深秋", "冬季", "夏季"), ("花期在{v}", "每到{v}便会开放")),
            "习性": (("耐寒", "喜阴", "喜光", "耐旱", "喜湿"), ("生性{v}", "属于{v}的植物")),
            "用途": (("观赏", "入药", "泡茶", "做香料", "绿化"), ("可以用来{v}", "常被人们拿来{v}")),
            "香气": (("清香", "浓香", "淡香", "幽香"), ("带着{v}", "散发出阵阵{v}")),
        },
        ("看着它，心情也变好了。", "它装点了四季。", ""),
    ),
    Kind(
        "饮品", "饮品",
        ("龙井茶", "普洱茶", "豆浆", "奶茶", "酸梅汤", "咖啡", "菊花茶", "绿豆汤", "米酒", "柠檬水", "椰汁"),
        ("{noun}是很多人的心头好。", "来一杯{noun}吧。"),
        {
            "温度": (("冰镇", "温热", "常温"), ("适合{v}饮用", "{v}着喝最好")),
            "口感": (("醇厚", "清爽", "香甜", "微苦", "顺滑"), ("口感{v}", "喝起来{v}")),
            "原料": (("茶叶", "黄豆", "牛奶", "乌梅", "咖啡豆", "绿豆", "糯米", "柠檬", "椰子"),
                     ("用{v}制成", "主要原料是{v}")),
            "功效": (("解渴", "提神", "暖胃", "消暑", "安神"), ("能够{v}", "有{v}的作用")),
        },
        ("喝完神清气爽。", "", ""),
    ),
    Kind(
        "场景", "人物",
        tuple(s + g for s in ("王", "李", "张", "刘", "陈", "杨", "赵", "黄", "周", "吴") for g in ("小明", "芳", "强", "丽")),
        ("{noun}的一天开始了。", "这是{noun}的故事。"),
        {
            "时间": (("清晨", "傍晚", "深夜", "正午", "周末", "雨天"), ("{v}的时候", "那是一个{v}")),
            "地点": (("公园", "车站", "图书馆", "山顶", "河边", "集市", "学校", "小镇"),
                     ("来到了{v}", "在{v}停下脚步", "走进{v}")),
            "物品": ((), ("手里拿着{v}", "发现了{v}", "想起了{v}")),
            "心情": (("高兴", "紧张", "平静", "失落", "惊喜", "感动"), ("心里很{v}", "感到十分{v}")),
        },
        ("这一天过得很充实。", "", ""),
    ),
)


# --------------------------------------------------------------------------------------------
# Goods for the home and the desk: the register of product texts (colours, materials, styles,
# patterns), never clothing, shoes or bags.
# --------------------------------------------------------------------------------------------

_COLOURS = ("白色", "黑色", "红色", "粉色", "蓝色", "绿色", "黄色", "灰色", "卡其色", "米白色", "藏青色", "酒红色",
            "咖啡色", "紫色", "橙色", "杏色", "墨绿色", "浅蓝色", "驼色", "香槟色", "银色", "金色", "原木色",
            "奶白色", "雾霾蓝", "焦糖色", "薄荷绿", "姜黄色", "深灰色", "湖蓝色")
_MATERIALS = ("实木", "棉麻", "丝绒", "纯棉", "亚麻", "陶瓷", "玻璃", "不锈钢", "皮革", "藤编", "竹子", "羊毛",
              "珊瑚绒", "雪纺", "针织", "法兰绒", "金属", "大理石", "硅胶", "帆布", "真丝", "灯芯绒", "蕾丝", "橡木")
_STYLES = ("简约", "复古", "北欧", "日系", "中式", "法式", "田园", "工业风", "文艺", "甜美", "清新", "奢华", "可爱",
           "现代", "极简", "轻奢", "国潮", "休闲", "森系", "优雅")
_PATTERNS = ("条纹", "格子", "碎花", "植物", "几何", "波点", "线条", "卡通", "字母", "刺绣", "印花", "豹纹", "星星",
             "花卉", "撞色", "拼接", "动物", "水墨", "山水", "纯色")
_CRAFTS = ("手工编织", "雕花", "烫金", "扎染", "抛光", "镂空", "拉丝", "绗缝", "手绘", "烧制")
_FUNCTIONS = ("收纳", "防水", "防滑", "遮光", "保温", "折叠", "静音", "助眠", "防尘", "可拆洗", "护眼", "防摔")
_ROOMS = ("客厅", "卧室", "书房", "阳台", "餐厅", "儿童房", "办公室", "玄关", "露营", "茶室")
_SHAPES = ("圆形", "方形", "椭圆形", "长方形", "心形", "不规则", "弧形", "六边形")

_GOODS_FIELDS = {
    "颜色": (_COLOURS, ("选用{v}", "{v}的配色", "以{v}为主色调", "通体{v}", "{v}的外观", "一抹{v}")),
    "材质": (_MATERIALS, ("采用{v}材质", "精选{v}", "{v}打造", "{v}质地", "用料是{v}")),
    "风格": (_STYLES, ("{v}风格的设计", "透着{v}的味道", "走{v}路线", "带着{v}气息", "{v}范儿十足")),
    "图案": (_PATTERNS, ("饰以{v}图案", "点缀着{v}", "{v}元素的点缀", "印有{v}图案", "{v}的图案")),
    "工艺": (_CRAFTS, ("采用{v}工艺", "经过{v}处理", "{v}的细节")),
    "功能": (_FUNCTIONS, ("具有{v}功能", "兼顾{v}", "{v}效果出色", "还能{v}")),
    "空间": (_ROOMS, ("适合放在{v}", "摆在{v}里", "{v}里的好帮手", "为{v}添彩")),
    "形状": (_SHAPES, ("{v}的造型", "做成{v}", "外形是{v}")),
}
_GOODS_TAILS = ("低调耐看", "质感十足", "清新自然", "沉稳大气", "温柔雅致", "明亮活泼", "干净利落", "耐看又实用",
                "颇具格调", "触感细腻", "经久耐用", "细节满满", "颜值很高", "百搭又好用", "精致小巧", "舒适温馨")
_GOODS_REMARKS = ("细节处理得很用心。", "放在家里，整个空间都亮了起来。", "简单却不单调，越看越耐看。", "无论自用还是送礼，都很合适。",
                  "做工扎实，用上好几年也不走样。", "小小的改变，就能让家焕然一新。", "每一处细节都经得起推敲。",
                  "不挑风格，怎么搭配都好看。", "看似普通，实则处处有巧思。", "日常使用毫无压力。", "低调之中透着精致。",
                  "安静地待在角落，也很有存在感。", "搭配绿植，氛围感满满。", "拿在手里，分量刚刚好。", "清洁打理也很方便。",
                  "自带一种松弛感。", "给平淡的日子添一点惊喜。", "是懂生活的人会选的好物。")
_GOODS_OPENINGS = ("这款{noun}，", "一款{noun}，", "家里添一件{noun}。", "{noun}也能很有格调。", "精心挑选的{noun}，",
                   "推荐这款{noun}。", "想换{noun}的看过来。")
_GOODS_CLOSINGS = ("给家增添了几分温馨。", "实用又美观。", "送人自用都合适。", "让生活更有仪式感。", "用起来很省心。", "")

# kind name, nouns, the fields it draws from
_GOODS = (
    ("家具", ("沙发", "椅子", "餐桌", "书桌", "书架", "床头柜", "茶几", "鞋柜", "摇椅", "边几"),
     ("颜色", "材质", "风格", "空间", "功能", "形状", "工艺")),
    ("家纺", ("窗帘", "抱枕", "四件套", "地毯", "桌布", "毛毯", "床垫", "靠垫", "坐垫", "门帘"),
     ("颜色", "材质", "图案", "风格", "功能", "空间", "工艺")),
    ("餐具", ("马克杯", "碗", "盘子", "花瓶", "茶壶", "保温杯", "饭盒", "果盘", "茶杯", "汤锅"),
     ("颜色", "材质", "图案", "风格", "形状", "功能", "工艺")),
    ("灯具", ("台灯", "落地灯", "吊灯", "壁灯", "小夜灯", "吸顶灯"),
     ("颜色", "材质", "风格", "空间", "功能", "形状")),
    ("文具", ("笔记本", "钢笔", "笔袋", "收纳盒", "台历", "书签", "文件夹", "笔筒"),
     ("颜色", "材质", "图案", "风格", "功能", "形状")),
    ("杂货", ("雨伞", "手机壳", "香薰", "挂钟", "相框", "镜子", "收纳篮", "抱枕套"),
     ("颜色", "材质", "图案", "风格", "功能", "空间", "形状")),
)

GOODS_KINDS = tuple(
    Kind(name, "类型", nouns, _GOODS_OPENINGS, {key: _GOODS_FIELDS[key] for key in keys}, _GOODS_CLOSINGS,
         tails=_GOODS_TAILS, remarks=_GOODS_REMARKS, category=False)
    for name, nouns, keys in _GOODS
)


def word_list(limit: int = 20000) -> tuple[str, ...]:
    """Two- to four-character words of jionlp's word dictionary, or a small fallback when not installed."""
    from tools.corpus import load_word_entries

    try:
        words = [w for w in load_word_entries() if 2 <= len(w) <= 4]
    except FileNotFoundError:
        words = []
    return tuple(words[:limit]) or ("雨伞", "信封", "钥匙", "照片", "地图", "茶杯", "风筝", "围巾")


def _draw_values(pool: tuple[str, ...], k: int, rng: random.Random, words: tuple[str, ...], open_share: float) -> list[str]:
    """``k`` distinct values of ``pool``, each replaced by a word of the word list with probability
    ``open_share``: a value the text can only get right by copying it from the header."""
    values = rng.sample(pool or words, k)
    return [rng.choice(words) if rng.random() < open_share else v for v in values]


def _draw_header(
    kind: Kind, rng: random.Random, words: tuple[str, ...], open_share: float, generic_share: float = 0.0,
    long_share: float = 0.0,
) -> dict[str, list[str]]:
    """The noun and 2-5 other keys, one value each (a second value for one key now and then), and with
    probability ``generic_share`` an invented key. With probability ``long_share`` the header is long
    instead: the noun and 5-8 other keys, the kind's own and then invented ones, as ADGEN's headers
    run to 9 pairs."""
    long = bool(long_share and rng.random() < long_share)
    size = rng.randint(5, 8) if long else rng.randint(min(2, len(kind.fields)), min(5, len(kind.fields)))
    keys = rng.sample(list(kind.fields), min(size, len(kind.fields)))
    header = {kind.noun_key: _draw_values(kind.nouns, 1, rng, words, open_share)}
    for key in (k for k in kind.fields if k in keys):  # header in the kind's key order
        values = _draw_values(kind.fields[key][0], 2 if rng.random() < 0.15 else 1, rng, words, open_share)
        header[key] = list(dict.fromkeys(values))
    invented = size - len(keys) if long else int(bool(generic_share and rng.random() < generic_share))
    for key in rng.sample(words, invented):  # invented keys: only a phrasing for any key can say their values
        if key not in header and key != kind.noun_key:
            header[key] = [rng.choice(words)]
    return header


def _text(kind: Kind, header: dict[str, list[str]], rng: random.Random, generic_share: float = 0.0,
          ordered_share: float = 0.0) -> str:
    """Opening with the noun, then one clause per other key in random order (in header order with
    probability ``ordered_share``), then maybe a closing. A clause uses a phrasing for any key with
    probability ``generic_share`` (always for an invented key)."""
    noun = header[kind.noun_key][0]
    opening = rng.choice(kind.openings + GENERIC_OPENINGS).format(noun=noun)
    clauses = []
    keys = [k for k in header if k != kind.noun_key]
    if not (ordered_share and rng.random() < ordered_share):
        keys = rng.sample(keys, len(keys))
    for key in keys:
        generic = key not in kind.fields or bool(generic_share and rng.random() < generic_share)
        phrasings = GENERIC_PHRASINGS if generic else kind.fields[key][1]
        clause = rng.choice(phrasings).format(k=key, v=rng.choice(("和", "、")).join(header[key]))
        if kind.tails and rng.random() < 0.5:
            clause += "，" + rng.choice(kind.tails)
        clauses.append(clause)
    connectors = list(CONNECTORS)
    rng.shuffle(connectors)
    sentences, i = [], 0
    while i < len(clauses):
        size = 2 if i + 1 < len(clauses) and rng.random() < 0.5 else 1
        sentence = "，".join(clauses[i : i + size]) + "。"
        if sentences and connectors and rng.random() < 0.3:  # a long header can outlast them
            sentence = connectors.pop() + sentence
        sentences.append(sentence)
        if kind.remarks and rng.random() < 0.4:
            sentences.append(rng.choice(kind.remarks))
        i += size
    return opening + "".join(sentences) + rng.choice(kind.closings or ("",))


def render_header(pairs: list[tuple[str, str]], style: str, separators: tuple[str, str] | None = None) -> str:
    """``键：值；键：值`` (``colon``), ``【键】值【键】值`` (``bracket``), ``键:值,键:值`` (``ascii``),
    ``键=值 键=值`` (``equals``) or, with ``separators=(a, b)``, ``键a值b键a值`` (``symbols``)."""
    if style == "symbols":
        if separators is None or len(set(separators)) != 2:
            raise ValueError(f"symbols header: expected two different separators, found {separators!r}")
        return separators[1].join(f"{key}{separators[0]}{value}" for key, value in pairs)
    if style == "colon":
        return "；".join(f"{key}：{value}" for key, value in pairs)
    if style == "bracket":
        return "".join(f"【{key}】{value}" for key, value in pairs)
    if style == "ascii":
        return ",".join(f"{key}:{value}" for key, value in pairs)
    if style == "equals":
        return " ".join(f"{key}={value}" for key, value in pairs)
    raise ValueError(f"header style: expected one of {', '.join(HEADER_STYLES)}, symbols, found {style!r}")


def header_pairs(kind: Kind, header: dict[str, list[str]]) -> list[tuple[str, str]]:
    """``(key, value)`` in header order: ``类别`` and the kind first (unless goods), the noun, the rest."""
    pairs = [(key, v) for key, values in header.items() for v in values]
    return [("类别", kind.name), *pairs] if kind.category else pairs


def record_corpus(
    n: int,
    seed: int,
    words: tuple[str, ...] | None = None,
    open_share: float = 0.0,
    goods_share: float = 0.5,
    generic_share: float = 0.0,
    symbol_share: float = 0.0,
    long_share: float = 0.0,
    ordered_share: float = 0.0,
) -> list[str]:
    """``n`` distinct records ``header + "\\n" + text``; the same seed gives the same list.

    ``open_share``: chance that a value comes from the word list instead of the kind's bank;
    ``goods_share``: share of records about goods (the rest: foods, cities, animals...);
    ``generic_share``: chance that a clause uses a phrasing for any key, and that a record has an invented key;
    ``symbol_share``: chance that a header is laid out with separators drawn from ``SYMBOL_*_SEPARATORS``;
    ``long_share``: chance that a header has 6-9 keys (the kind's own, then invented ones) instead of 3-6;
    ``ordered_share``: chance that the text names the values in header order instead of a random one.
    """
    rng = random.Random(seed)
    words = word_list() if words is None else words
    seen: set[str] = set()
    records = []
    while len(records) < n:
        kind = rng.choice(GOODS_KINDS if rng.random() < goods_share else KINDS)
        header = _draw_header(kind, rng, words, open_share, generic_share, long_share)
        text = _text(kind, header, rng, generic_share, ordered_share)
        if symbol_share and rng.random() < symbol_share:
            key_separator = rng.choice(SYMBOL_KEY_SEPARATORS)
            pair_separator = rng.choice(SYMBOL_PAIR_SEPARATORS.replace(key_separator, ""))
            header_text = render_header(header_pairs(kind, header), "symbols", (key_separator, pair_separator))
        else:
            header_text = render_header(header_pairs(kind, header), rng.choice(HEADER_STYLES))
        record = header_text + HEADER_SEPARATOR + text
        if record not in seen:
            seen.add(record)
            records.append(record)
    return records

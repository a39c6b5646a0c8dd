"""Industry (9 groups + unknown) and legal form (11 kinds + other) read from an enterprise name.

The names are anonymised (``***电器销售有限公司``) but keep the business words, which
is how paper 004 classifies them (National Bureau of Statistics groups). Rules are
ordered: the first keyword that matches wins, so more specific words come first.

Examples
--------
>>> classify_name("***电器销售有限公司")
('wholesale_retail', 'limited_company')
>>> classify_name("***建筑劳务有限责任公司")
('construction', 'limited_liability_company')
>>> classify_name("个体经营E124")
('unknown', 'individual_business')
>>> classify_name("***药业连锁有限公司***药店")
('wholesale_retail', 'chain_company_branch')
"""

from __future__ import annotations

from typing import Final

_INDUSTRY_RULES: Final[tuple[tuple[str, tuple[str, ...]], ...]] = (
    ("real_estate", ("房地产", "置业", "物业", "地产")),
    ("transport_warehousing_postal", ("物流", "运输", "快递", "货运", "运业", "运贸", "仓储", "邮")),
    ("leasing_business_services", ("租赁", "管理咨询", "企业管理", "人力资源", "招投标", "代理", "营销策划", "供应链", "投资", "商业管理", "财务管理", "财税", "事务所")),
    ("construction", ("建筑", "建设", "工程", "装饰", "装修", "劳务", "安装", "路桥", "园林", "景观", "勘察", "土地整理", "地质", "门窗")),
    ("information_software_it", ("信息", "软件", "网络", "通信", "通讯", "数码", "电子商务", "科技", "技术", "智能", "电脑")),
    ("agriculture_forestry_fishery", ("农", "林", "牧", "渔", "养殖", "种植", "合作社", "园艺", "花木", "猕猴桃", "魔芋", "蔬菜", "大闸蟹", "兰花")),
    ("manufacturing", ("电子", "机电", "空调", "制造", "制品", "加工", "机械", "铸造", "工业", "厂", "材料", "建材", "设备", "化工", "制药", "纺织", "印务", "印刷", "鞋", "塑胶", "木业", "纸业", "轮胎", "石材", "合金", "电气", "电器设备", "调味品", "食品", "服饰", "不锈钢", "钢结构", "包装")),
    ("wholesale_retail", ("销售", "贸易", "商贸", "工贸", "汽贸", "经营部", "商行", "超市", "百货", "批发", "零售", "药房", "药店", "药业", "医药", "店", "经销", "物资", "家居", "用品", "器材", "图书", "石化", "天然气", "家电", "电器", "五金")),
    ("other_services", ("服务", "咨询", "文化", "传媒", "传播", "广告", "教育", "设计", "医疗", "餐饮", "酒店", "旅游", "影城", "演艺", "体育", "检测", "检验", "测绘", "研究院", "清洁", "福利", "美容", "维修", "中心", "发展", "实业", "集团")),
)

_LEGAL_RULES: Final[tuple[tuple[str, tuple[str, ...]], ...]] = (
    ("individual_business", ("个体经营", "个体")),
    ("welfare_institute", ("福利院",)),
    ("cooperative", ("合作社",)),
    ("firm", ("事务所",)),
    ("head_office", ("总公司",)),
)


def industry_of(name: str) -> str:
    """The industry group of an enterprise name, or ``"unknown"``."""
    for industry, words in _INDUSTRY_RULES:
        if any(word in name for word in words):
            return industry
    return "unknown"


def legal_form_of(name: str) -> str:
    """The legal form of an enterprise name, or ``"other"``."""
    for form, words in _LEGAL_RULES:
        if any(word in name for word in words):
            return form
    is_branch = any(word in name for word in ("分公司", "分院")) or (
        "有限" in name and not name.rstrip().endswith(("公司", "）", ")"))
    )
    if is_branch and "连锁" in name:
        return "chain_company_branch"
    if is_branch and "有限" in name:
        return "limited_company_branch"
    if is_branch:
        return "branch"
    if "有限责任公司" in name:
        return "limited_liability_company"
    if "有限公司" in name or "有限合伙" in name:
        return "limited_company"
    if any(name.endswith(word) for word in ("部", "店", "厂", "场", "站", "院", "中心", "药房", "社")):
        return "business_department"
    return "other"


def classify_name(name: str | None) -> tuple[str, str]:
    """``(industry, legal_form)`` of an enterprise name; an unknown name gives ``("unknown", "other")``."""
    if not name:
        return "unknown", "other"
    name = name.strip()
    return industry_of(name), legal_form_of(name)

from __future__ import annotations

import pytest

from onebox.data.pii import is_valid_id_number, luhn_ok, redact


def make_id(first17: str) -> str:
    """Chinese resident ID with its ISO 7064 MOD 11-2 check character, computed independently."""
    weights = [2 ** (17 - i) % 11 for i in range(17)]
    total = sum(int(d) * w for d, w in zip(first17, weights, strict=True))
    return first17 + "10X98765432"[total % 11]


def make_card(prefix: str) -> str:
    """Append the Luhn check digit to ``prefix``."""
    for check in "0123456789":
        digits = [int(c) for c in prefix + check][::-1]
        total = sum(d if i % 2 == 0 else (d * 2 - 9 if d * 2 > 9 else d * 2) for i, d in enumerate(digits))
        if total % 10 == 0:
            return prefix + check
    raise AssertionError("unreachable")


def bad_check(number: str) -> str:
    """Same number with a wrong final character."""
    last = number[-1]
    return number[:-1] + ("1" if last != "1" else "2")


ID_1 = make_id("11010519491231002")  # ends in X
ID_2 = make_id("44030419900101123")
CARD_16 = make_card("622202123456789")
CARD_19 = make_card("621700001234567890")
VISA = make_card("411111111111111")


def test_helpers_agree_with_known_values():
    assert ID_1 == "11010519491231002X"
    assert VISA == "4111111111111111"
    assert is_valid_id_number(ID_1) and is_valid_id_number(ID_1.lower())
    assert not is_valid_id_number(bad_check(ID_2))
    assert luhn_ok(CARD_16) and not luhn_ok(bad_check(CARD_16))


@pytest.mark.parametrize("id_number", [ID_1, ID_1[:-1] + "x", ID_2])
def test_valid_id_numbers_are_redacted(id_number):
    text, counts = redact(f"身份证号：{id_number}，请核对。")
    assert text == "身份证号：[ID_NUMBER]，请核对。"
    assert counts == {"id_number": 1}


def test_id_with_wrong_check_digit_is_kept():
    number = bad_check(ID_2)
    text, counts = redact(f"编号 {number} 不是身份证")
    assert number in text and "id_number" not in counts


@pytest.mark.parametrize(
    "card",
    [
        CARD_16,
        CARD_19,
        VISA,
        " ".join([VISA[i : i + 4] for i in range(0, 16, 4)]),
        "-".join([CARD_16[i : i + 4] for i in range(0, 16, 4)]),
        " ".join([CARD_19[0:4], CARD_19[4:8], CARD_19[8:12], CARD_19[12:16], CARD_19[16:]]),
    ],
)
def test_luhn_valid_cards_are_redacted(card):
    text, counts = redact(f"银行卡 {card} 已绑定")
    assert text == "银行卡 [BANK_CARD] 已绑定"
    assert counts == {"bank_card": 1}


def test_luhn_invalid_card_is_kept():
    number = bad_check(CARD_16)
    text, counts = redact(f"订单号 {number}")
    assert text == f"订单号 {number}" and not counts


@pytest.mark.parametrize(
    "email", ["zhang.san@example.com", "li_si+tag@mail.example.com.cn", "WANG@EXAMPLE.ORG", "a1@b2.io"]
)
def test_emails(email):
    text, counts = redact(f"邮箱{email}，谢谢")
    assert text == "邮箱[EMAIL]，谢谢"
    assert counts == {"email": 1}


@pytest.mark.parametrize(
    "phone",
    [
        "+86 138 0013 8000",
        "+8613800138000",
        "+86-138-0013-8000",
        "+1 202 555 0143",
        "+44 20 7946 0958",
        "13800138000",
        "199 1234 5678",
        "138-0013-8000",
        "010-12345678",
        "0755-1234567",
        "(010)12345678",
        "（021）87654321",
    ],
)
def test_phone_numbers(phone):
    text, counts = redact(f"请拨打{phone}咨询")
    assert text == "请拨打[PHONE]咨询"
    assert counts == {"phone": 1}


def test_international_phone_followed_by_a_number_keeps_the_number():
    text, _ = redact("+86 138 0013 8000 2024")
    assert text == "[PHONE] 2024"


@pytest.mark.parametrize(
    "text",
    [
        "价格 1999 元，折后 ¥1299.00",
        "2024 年 5 月 1 日发布",
        "型号 X200 和 VX-500，功率 1500W",
        "日期 2024-01-15 至 2024-02-20",
        "订单号 20240115000123",
        "版本 3.10.12, 端口 8080",
        "call me maybe",
        "合计 12345678 元",
        "ABC13800138000",
        "客服热线 400-600-5817",  # company service line, not personal data
    ],
)
def test_ordinary_numbers_are_kept(text):
    assert redact(text) == (text, {})


def test_ids_and_cards_are_not_split_into_phones():
    text, counts = redact(f"{ID_2} / {CARD_19} / 13800138000 / a@b.cn")
    assert text == "[ID_NUMBER] / [BANK_CARD] / [PHONE] / [EMAIL]"
    assert counts == {"id_number": 1, "bank_card": 1, "phone": 1, "email": 1}


def test_multiple_of_a_kind_are_counted():
    _, counts = redact("13800138000 或 13900139000，a@x.com b@y.com")
    assert counts == {"phone": 2, "email": 2}


def test_allowlisted_strings_are_kept():
    text = "客服邮箱 help@varnolia.example.com，客户邮箱 li@example.com，电话 13800138000"
    out, counts = redact(text, allow=["help@varnolia.example.com"])
    assert out == "客服邮箱 help@varnolia.example.com，客户邮箱 [EMAIL]，电话 [PHONE]"
    assert counts == {"email": 1, "phone": 1}

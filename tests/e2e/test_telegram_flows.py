"""The product driven as a Telegram user would: through the fake Bot API, the real aiogram polling,
real Replicate SDK calls to the fake Replicate, both plans, both databases."""

from __future__ import annotations

import asyncio

from loguru import logger

from generation.store import GenerationStatus
from tests.conftest import ADMIN_ID, OTHER_BOT_TOKEN, AppFactory
from tests.e2e.helpers import USER, Chat, album_images, all_settled, balance_and_ledger_sum, generations_of
from tests.fakes.replicate import FakeReplicate, HttpError, Outcome
from tests.fakes.telegram import FakeTelegram

FLUX = "black-forest-labs/flux-schnell"


async def test_start_registers_and_greets_with_the_balance(
    make_app: AppFactory, telegram: FakeTelegram
) -> None:
    await make_app()
    greeting = await Chat(telegram).ask("/start", "Your balance: 10 ⭐")
    assert "/image" in (greeting.text or "")
    russian = await Chat(telegram, user_id=2002, language="ru").ask("/start", "Ваш баланс: 10 ⭐")
    assert "/image" in (russian.text or "")


async def test_image_album_on_plan_b_without_redis(
    make_app: AppFactory, telegram: FakeTelegram, replicate: FakeReplicate
) -> None:
    app = await make_app()  # the default settings point Redis at a closed port
    chat = Chat(telegram)
    chat.send("/image 3 a red fox in the snow")
    done = await chat.reply("Charged 3 ⭐. Balance: 7 ⭐")
    albums = chat.albums()
    assert len(albums) == 1
    assert album_images(albums[0]) == [replicate.png_bytes(i) for i in range(3)]
    assert albums[0].method == "sendMediaGroup"
    assert replicate.create_count(FLUX) == 1
    assert replicate.creates[0]["input"]["num_outputs"] == 3
    assert replicate.creates[0]["input"]["prompt"] == "a red fox in the snow"
    [generation] = await all_settled(app)
    assert (generation.plan, generation.status, generation.price, generation.refunded) == ("B", "done", 3, 0)
    assert await balance_and_ledger_sum(app) == (7, 7)
    # The "working" status message was shown, then removed once the result arrived.
    working = await chat.reply("Working on it")
    assert any(
        call.method == "deleteMessage" and call.params["message_id"] == working.result["message_id"]
        for call in telegram.calls
    )
    assert done.result["message_id"] > albums[0].result[0]["message_id"]


async def test_image_on_plan_a_through_the_embedded_worker(
    make_app: AppFactory, telegram: FakeTelegram, replicate: FakeReplicate, database_url: str, redis_url: str
) -> None:
    app = await make_app(database_url=database_url, redis_url=redis_url)
    replicate.script(FLUX, Outcome(polls=2))
    chat = Chat(telegram)
    chat.send("/image a lighthouse at dusk")
    await chat.reply("Charged 1 ⭐. Balance: 9 ⭐")
    [generation] = await all_settled(app)
    assert (generation.plan, generation.status, generation.attempts) == ("A", "done", 1)
    assert [album.method for album in chat.albums()] == ["sendPhoto"]
    assert album_images(chat.albums()[0]) == [replicate.png_bytes(0)]
    assert replicate.create_count() == 1
    assert await balance_and_ledger_sum(app) == (9, 9)


async def test_a_duplicate_update_makes_one_generation(
    make_app: AppFactory, telegram: FakeTelegram, replicate: FakeReplicate
) -> None:
    app = await make_app()
    hold = asyncio.Event()
    replicate.script(FLUX, Outcome(hold=hold))
    chat = Chat(telegram)
    update = chat.send("/image 2 twin peaks")
    await replicate.wait_for_create(1)
    ignored = asyncio.Semaphore(0)
    sink = logger.add(
        lambda _: ignored.release(), filter=lambda record: "duplicate Telegram update" in record["message"]
    )
    try:
        telegram.push_update(chat.token, update)  # Telegram delivers the same update again
        telegram.push_update(chat.token, update)
        for _ in range(2):  # both handled (and found to be the first one's) before it goes on
            await asyncio.wait_for(ignored.acquire(), 10)
    finally:
        logger.remove(sink)
    hold.set()
    await chat.reply("Charged 2 ⭐. Balance: 8 ⭐")
    assert len(await generations_of(app)) == 1
    assert replicate.create_count() == 1
    assert len(chat.albums()) == 1
    assert sum("Charged" in text for text in chat.texts()) == 1
    assert await balance_and_ledger_sum(app) == (8, 8)


async def test_a_failed_prediction_is_refunded_with_a_message_in_the_users_language(
    make_app: AppFactory, telegram: FakeTelegram, replicate: FakeReplicate, database_url: str
) -> None:
    app = await make_app(database_url=database_url)
    replicate.script(FLUX, Outcome(status="failed", error="CUDA out of memory"))
    chat = Chat(telegram, language="ru")
    chat.send("/image 4 горы")
    await chat.reply("Генерация не удалась. Возвращено 4 ⭐. Баланс: 10 ⭐")
    [generation] = await all_settled(app)
    assert (generation.status, generation.refunded) == (GenerationStatus.failed, 4)
    assert "CUDA out of memory" in (generation.error or "")
    assert chat.albums() == []
    assert await balance_and_ledger_sum(app) == (10, 10)


async def test_a_refused_create_is_refunded_and_not_retried_forever(
    make_app: AppFactory, telegram: FakeTelegram, replicate: FakeReplicate
) -> None:
    app = await make_app()
    replicate.script(FLUX, HttpError(422, "Input validation failed", "- input.prompt: flagged"))
    chat = Chat(telegram)
    chat.send("/image something the provider refuses")
    await chat.reply("refused this request")
    [generation] = await all_settled(app)
    assert generation.status == "failed"
    assert await balance_and_ledger_sum(app) == (10, 10)


async def test_insufficient_balance_says_what_it_costs_and_charges_nothing(
    make_app: AppFactory, telegram: FakeTelegram, replicate: FakeReplicate
) -> None:
    app = await make_app(new_user_bonus=2)
    await Chat(telegram).ask("/image 4 a castle", "this costs 4 ⭐, your balance is 2 ⭐")
    assert replicate.creates == []
    assert await generations_of(app) == []
    assert await balance_and_ledger_sum(app) == (2, 2)


async def test_bad_input_gets_a_clear_message_costs_nothing_calls_no_provider(
    make_app: AppFactory, telegram: FakeTelegram, replicate: FakeReplicate
) -> None:
    app = await make_app()
    chat = Chat(telegram)
    await chat.ask("/image", "Write a prompt after the command")
    await chat.ask("/image 7 too many foxes", "number of images must be from 1 to 4")
    await chat.ask("/image 0 no foxes", "number of images must be from 1 to 4")
    await chat.ask("/image " + "x" * 2100, "at most 2000 characters, yours has 2100")
    ru = Chat(telegram, user_id=3003, language="ru")
    await ru.ask("/image 9 лисы", "Количество изображений должно быть от 1 до 4")
    assert replicate.creates == []
    assert await generations_of(app) == []
    assert await balance_and_ledger_sum(app) == (10, 10)


async def test_results_go_back_through_the_bot_the_user_wrote_to(
    make_app: AppFactory, telegram: FakeTelegram, replicate: FakeReplicate
) -> None:
    app = await make_app()
    other = Chat(telegram, token=OTHER_BOT_TOKEN)
    other.send("/image a second bot")
    await other.reply("Charged 1 ⭐")
    assert len(other.albums()) == 1
    assert Chat(telegram).albums() == []  # nothing through the first bot
    assert await balance_and_ledger_sum(app, bot_name="other_bot") == (9, 9)


async def test_balance_lists_operations_and_lang_switches(
    make_app: AppFactory, telegram: FakeTelegram, replicate: FakeReplicate
) -> None:
    await make_app()
    chat = Chat(telegram)
    chat.send("/image a cat")
    await chat.reply("Charged 1 ⭐")
    history = await chat.ask("/balance", "Your balance: 9 ⭐")
    assert "−1 ⭐ generation" in (history.text or "")
    assert "+10 ⭐ credit" in (history.text or "")
    await chat.ask("/lang", "Язык: русский")
    await chat.ask("/balance", "Ваш баланс: 9 ⭐")
    await chat.ask("/lang", "Language: English")


async def test_model_choice_is_used_by_the_next_image(
    make_app: AppFactory, telegram: FakeTelegram, replicate: FakeReplicate
) -> None:
    await make_app()
    chat = Chat(telegram)
    menu = await chat.ask("/model", "Choose the model")
    telegram.press_button(chat.token, user_id=USER, message=menu.result, data="model:flux-dev")
    await chat.reply("Image model: Flux Dev", method="editMessageText")
    chat.send("/image a dragon")
    await chat.reply("Charged 3 ⭐. Balance: 7 ⭐")
    assert replicate.create_count("black-forest-labs/flux-dev") == 1


async def test_admin_switches_the_plan_and_it_survives_a_restart(
    make_app: AppFactory, telegram: FakeTelegram, replicate: FakeReplicate, redis_url: str
) -> None:
    await make_app(redis_url=redis_url)
    admin = Chat(telegram, user_id=ADMIN_ID)
    status = await admin.ask("/plan", "Plan in force: A")
    assert "mode: auto" in (status.text or "")
    assert "Queue: healthy" in (status.text or "") and "Breaker: closed" in (status.text or "")
    assert "Generations per plan: A 0, B 0" in (status.text or "")
    await admin.ask("/plan b", "Plan mode switched to b. Plan in force: B")
    admin.send("/image under plan b")
    await admin.reply("Charged 1 ⭐")
    # A non-admin gets no admin power and no admin output.
    user = Chat(telegram)
    await user.ask("/plan a", "I don't know this command")
    assert not any("Plan" in text for text in user.texts())


async def test_the_plan_switch_is_persisted_for_new_processes(
    make_app: AppFactory, telegram: FakeTelegram, replicate: FakeReplicate, redis_url: str
) -> None:
    first = await make_app(redis_url=redis_url)
    admin = Chat(telegram, user_id=ADMIN_ID)
    await admin.ask("/plan b", "Plan in force: B")
    await first.stop()
    second = await make_app(redis_url=redis_url)
    assert second.generations is not None
    assert (await second.generations.mode())[0].value == "b"
    Chat(telegram).send("/image after restart")
    await Chat(telegram).reply("Charged 1 ⭐")
    [generation] = await all_settled(second)
    assert generation.plan == "B"


async def test_admin_grants_stars_once_per_command(
    make_app: AppFactory, telegram: FakeTelegram, replicate: FakeReplicate
) -> None:
    app = await make_app()
    user = Chat(telegram)
    await user.ask("/start", "Your balance: 10 ⭐")
    admin = Chat(telegram, user_id=ADMIN_ID)
    update = admin.send(f"/grant {USER} 25")
    await admin.reply("Credited 25 ⭐")
    await user.reply("You received 25 ⭐. Balance: 35 ⭐")
    telegram.push_update(admin.token, update)  # a repeated update credits nothing more
    await admin.ask("/grant 424242 5", "has not started this bot yet")
    assert await balance_and_ledger_sum(app) == (35, 35)
    await Chat(telegram, user_id=5005).ask(f"/grant {USER} 1000", "I don't know this command")
    assert await balance_and_ledger_sum(app) == (35, 35)

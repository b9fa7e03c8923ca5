-- The TPC-C tables and transactions for PostgreSQL, the same data and the same logic as
-- sealdb's (txns.rs): money in cents, rates in basis points, timestamps in microseconds since
-- the Unix epoch, ITEM copied per warehouse. Each transaction is one PL/pgSQL function, so a
-- transaction is one round trip, as a sealdb procedure call is. Primary keys and indexes are
-- added after the load (`postgres_indexes.sql`).

CREATE TABLE warehouse (
    w_id int NOT NULL, w_name text, w_street_1 text, w_street_2 text, w_city text,
    w_state text, w_zip text, w_tax bigint, w_ytd bigint);
CREATE TABLE district (
    d_w_id int NOT NULL, d_id int NOT NULL, d_name text, d_street_1 text, d_street_2 text,
    d_city text, d_state text, d_zip text, d_tax bigint, d_ytd bigint, d_next_o_id int);
CREATE TABLE customer (
    c_w_id int NOT NULL, c_d_id int NOT NULL, c_id int NOT NULL, c_first text, c_middle text,
    c_last text, c_street_1 text, c_street_2 text, c_city text, c_state text, c_zip text,
    c_phone text, c_since bigint, c_credit text, c_credit_lim bigint, c_discount bigint,
    c_balance bigint, c_ytd_payment bigint, c_payment_cnt int, c_delivery_cnt int, c_data text);
CREATE TABLE history (
    h_w_id int NOT NULL, h_id bigint NOT NULL, h_c_id int, h_c_d_id int, h_c_w_id int,
    h_d_id int, h_date bigint, h_amount bigint, h_data text);
CREATE TABLE new_order (no_w_id int NOT NULL, no_d_id int NOT NULL, no_o_id int NOT NULL);
CREATE TABLE orders (
    o_w_id int NOT NULL, o_d_id int NOT NULL, o_id int NOT NULL, o_c_id int, o_entry_d bigint,
    o_carrier_id int, o_ol_cnt int, o_all_local boolean);
CREATE TABLE order_line (
    ol_w_id int NOT NULL, ol_d_id int NOT NULL, ol_o_id int NOT NULL, ol_number int NOT NULL,
    ol_i_id int, ol_supply_w_id int, ol_delivery_d bigint, ol_quantity int, ol_amount bigint,
    ol_dist_info text);
CREATE TABLE item (
    i_w_id int NOT NULL, i_id int NOT NULL, i_im_id int, i_name text, i_price bigint,
    i_data text);
CREATE TABLE stock (
    s_w_id int NOT NULL, s_i_id int NOT NULL, s_quantity bigint, s_dist text[], s_ytd bigint,
    s_order_cnt int, s_remote_cnt int, s_data text);

CREATE FUNCTION now_micros() RETURNS bigint LANGUAGE sql AS $$
    SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint
$$;

-- Clause 2.5.2.2: of the customers called `p_last`, sorted by first name, the one at position
-- ceil(n / 2).
CREATE FUNCTION customer_by_name(p_w int, p_d int, p_last text) RETURNS int
LANGUAGE plpgsql AS $$
DECLARE
    v_n int;
    v_c int;
BEGIN
    SELECT count(*) INTO v_n FROM customer
        WHERE c_w_id = p_w AND c_d_id = p_d AND c_last = p_last;
    IF v_n = 0 THEN
        RAISE EXCEPTION 'no customer named %', p_last;
    END IF;
    SELECT c_id INTO v_c FROM customer
        WHERE c_w_id = p_w AND c_d_id = p_d AND c_last = p_last
        ORDER BY c_first COLLATE "C", c_id OFFSET (v_n + 1) / 2 - 1 LIMIT 1;
    RETURN v_c;
END $$;

-- Clause 2.4.2. Returns the order's total; an unused item id rolls back with SQLSTATE TPC01.
CREATE FUNCTION new_order(p_w int, p_d int, p_c int, p_items int[], p_supply int[],
                          p_quantity int[]) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_w_tax bigint;
    v_d_tax bigint;
    v_o int;
    v_discount bigint;
    v_price bigint;
    v_dist text;
    v_amount bigint;
    v_total bigint := 0;
    v_n int := array_length(p_items, 1);
BEGIN
    SELECT w_tax INTO v_w_tax FROM warehouse WHERE w_id = p_w;
    UPDATE district SET d_next_o_id = d_next_o_id + 1 WHERE d_w_id = p_w AND d_id = p_d
        RETURNING d_tax, d_next_o_id - 1 INTO v_d_tax, v_o;
    SELECT c_discount INTO v_discount FROM customer
        WHERE c_w_id = p_w AND c_d_id = p_d AND c_id = p_c;
    INSERT INTO orders VALUES (p_w, p_d, v_o, p_c, now_micros(), NULL, v_n,
                               p_w = ALL (p_supply));
    INSERT INTO new_order VALUES (p_w, p_d, v_o);
    FOR k IN 1..v_n LOOP
        SELECT i_price INTO v_price FROM item WHERE i_w_id = p_w AND i_id = p_items[k];
        IF NOT FOUND THEN
            RAISE EXCEPTION 'item number is not valid' USING ERRCODE = 'TPC01';
        END IF;
        UPDATE stock SET
            s_quantity = CASE WHEN s_quantity >= p_quantity[k] + 10
                              THEN s_quantity - p_quantity[k]
                              ELSE s_quantity - p_quantity[k] + 91 END,
            s_ytd = s_ytd + p_quantity[k],
            s_order_cnt = s_order_cnt + 1,
            s_remote_cnt = s_remote_cnt + (p_supply[k] <> p_w)::int
            WHERE s_w_id = p_supply[k] AND s_i_id = p_items[k]
            RETURNING s_dist[p_d] INTO v_dist;
        v_amount := p_quantity[k] * v_price;
        INSERT INTO order_line VALUES (p_w, p_d, v_o, k, p_items[k], p_supply[k], NULL,
                                       p_quantity[k], v_amount, v_dist);
        v_total := v_total + v_amount;
    END LOOP;
    RETURN v_total * (10000 - v_discount) / 10000 * (10000 + v_w_tax + v_d_tax) / 10000;
END $$;

-- Clause 2.5.2. The customer is `p_c` or, if `p_last` is not null, found by last name.
CREATE FUNCTION payment(p_w int, p_d int, p_c_w int, p_c_d int, p_c int, p_last text,
                        p_amount bigint, p_h_id bigint) RETURNS int
LANGUAGE plpgsql AS $$
DECLARE
    v_w_name text;
    v_d_name text;
    v_c int := p_c;
    v_credit text;
    v_data text;
BEGIN
    UPDATE warehouse SET w_ytd = w_ytd + p_amount WHERE w_id = p_w RETURNING w_name INTO v_w_name;
    UPDATE district SET d_ytd = d_ytd + p_amount WHERE d_w_id = p_w AND d_id = p_d
        RETURNING d_name INTO v_d_name;
    IF p_last IS NOT NULL THEN
        v_c := customer_by_name(p_c_w, p_c_d, p_last);
    END IF;
    UPDATE customer SET c_balance = c_balance - p_amount,
                        c_ytd_payment = c_ytd_payment + p_amount,
                        c_payment_cnt = c_payment_cnt + 1
        WHERE c_w_id = p_c_w AND c_d_id = p_c_d AND c_id = v_c
        RETURNING c_credit, c_data INTO v_credit, v_data;
    IF v_credit = 'BC' THEN
        UPDATE customer SET c_data = left(format('%s %s %s %s %s %s|%s', v_c, p_c_d, p_c_w, p_d,
                                                 p_w, p_amount, v_data), 500)
            WHERE c_w_id = p_c_w AND c_d_id = p_c_d AND c_id = v_c;
    END IF;
    INSERT INTO history VALUES (p_w, p_h_id, v_c, p_c_d, p_c_w, p_d, now_micros(), p_amount,
                                v_w_name || '    ' || v_d_name);
    RETURN v_c;
END $$;

-- Clause 2.6.2. Returns the number of lines of the customer's last order.
CREATE FUNCTION order_status(p_w int, p_d int, p_c int, p_last text) RETURNS int
LANGUAGE plpgsql AS $$
DECLARE
    v_c int := p_c;
    v_balance bigint;
    v_o int;
    v_lines int;
BEGIN
    IF p_last IS NOT NULL THEN
        v_c := customer_by_name(p_w, p_d, p_last);
    END IF;
    SELECT c_balance INTO v_balance FROM customer
        WHERE c_w_id = p_w AND c_d_id = p_d AND c_id = v_c;
    SELECT o_id INTO v_o FROM orders WHERE o_w_id = p_w AND o_d_id = p_d AND o_c_id = v_c
        ORDER BY o_id DESC LIMIT 1;
    IF NOT FOUND THEN
        RETURN 0;
    END IF;
    SELECT count(*) INTO v_lines FROM (
        SELECT ol_i_id, ol_supply_w_id, ol_quantity, ol_amount, ol_delivery_d FROM order_line
            WHERE ol_w_id = p_w AND ol_d_id = p_d AND ol_o_id = v_o) AS lines;
    RETURN v_lines;
END $$;

-- Clause 2.7.4, all ten districts in one transaction. Returns how many had an order.
CREATE FUNCTION delivery(p_w int, p_carrier int) RETURNS int
LANGUAGE plpgsql AS $$
DECLARE
    v_now bigint := now_micros();
    v_o int;
    v_c int;
    v_sum bigint;
    v_delivered int := 0;
BEGIN
    FOR v_d IN 1..10 LOOP
        SELECT no_o_id INTO v_o FROM new_order WHERE no_w_id = p_w AND no_d_id = v_d
            ORDER BY no_o_id LIMIT 1;
        CONTINUE WHEN NOT FOUND;
        DELETE FROM new_order WHERE no_w_id = p_w AND no_d_id = v_d AND no_o_id = v_o;
        UPDATE orders SET o_carrier_id = p_carrier
            WHERE o_w_id = p_w AND o_d_id = v_d AND o_id = v_o RETURNING o_c_id INTO v_c;
        UPDATE order_line SET ol_delivery_d = v_now
            WHERE ol_w_id = p_w AND ol_d_id = v_d AND ol_o_id = v_o;
        SELECT coalesce(sum(ol_amount), 0) INTO v_sum FROM order_line
            WHERE ol_w_id = p_w AND ol_d_id = v_d AND ol_o_id = v_o;
        UPDATE customer SET c_balance = c_balance + v_sum, c_delivery_cnt = c_delivery_cnt + 1
            WHERE c_w_id = p_w AND c_d_id = v_d AND c_id = v_c;
        v_delivered := v_delivered + 1;
    END LOOP;
    RETURN v_delivered;
END $$;

-- Clause 2.8.2: distinct items of the district's last 20 orders with stock below the
-- threshold.
CREATE FUNCTION stock_level(p_w int, p_d int, p_threshold bigint) RETURNS int
LANGUAGE sql AS $$
    SELECT count(DISTINCT s_i_id)::int
    FROM district
    JOIN order_line ON ol_w_id = d_w_id AND ol_d_id = d_id
                   AND ol_o_id >= d_next_o_id - 20 AND ol_o_id < d_next_o_id
    JOIN stock ON s_w_id = d_w_id AND s_i_id = ol_i_id
    WHERE d_w_id = p_w AND d_id = p_d AND s_quantity < p_threshold
$$;

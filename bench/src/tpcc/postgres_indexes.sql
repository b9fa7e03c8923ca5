-- Keys and indexes, built after the load (faster than maintaining them row by row).
ALTER TABLE warehouse ADD PRIMARY KEY (w_id);
ALTER TABLE district ADD PRIMARY KEY (d_w_id, d_id);
ALTER TABLE customer ADD PRIMARY KEY (c_w_id, c_d_id, c_id);
ALTER TABLE history ADD PRIMARY KEY (h_w_id, h_id);
ALTER TABLE new_order ADD PRIMARY KEY (no_w_id, no_d_id, no_o_id);
ALTER TABLE orders ADD PRIMARY KEY (o_w_id, o_d_id, o_id);
ALTER TABLE order_line ADD PRIMARY KEY (ol_w_id, ol_d_id, ol_o_id, ol_number);
ALTER TABLE item ADD PRIMARY KEY (i_w_id, i_id);
ALTER TABLE stock ADD PRIMARY KEY (s_w_id, s_i_id);
-- The customer-by-last-name index (clause 2.5.2.2) and Order-Status's last order.
CREATE INDEX customer_name_idx ON customer (c_w_id, c_d_id, c_last, c_first COLLATE "C");
CREATE INDEX orders_customer_idx ON orders (o_w_id, o_d_id, o_c_id, o_id);

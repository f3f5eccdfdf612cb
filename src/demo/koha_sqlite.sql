-- Lethe demo library: a Koha-shaped schema for SQLite.
--
-- Written for Lethe from the facts of Koha's installer/data/mysql/kohastructure.sql
-- (table and column names, types, NOT NULL, defaults, foreign keys and their
-- ON DELETE / ON UPDATE actions). Only the tables and columns Lethe's demo and
-- tests use are declared; every column here exists in Koha with the same meaning.
--
-- Conventions:
--   * DATETIME columns hold local wall time as text 'YYYY-MM-DD HH:MM:SS';
--     DATE columns hold 'YYYY-MM-DD'. SQLite compares both as text.
--   * TIMESTAMP columns default to CURRENT_TIMESTAMP (UTC, same text format).
--     SQLite has no ON UPDATE CURRENT_TIMESTAMP: unlike MariaDB, an UPDATE does
--     not change them unless the statement sets them.
--   * Koha's AUTO_INCREMENT keys are INTEGER PRIMARY KEY AUTOINCREMENT (ids are
--     never reused); old_issues.issue_id and old_reserves.reserve_id are copied
--     from issues / reserves and are plain INTEGER PRIMARY KEY.
--   * A foreign key without an ON DELETE action is Koha's RESTRICT (InnoDB's
--     default), which SQLite's NO ACTION matches at statement end.
--   * SQLite index names are global, so indexes whose Koha name repeats across
--     tables carry the table name as a prefix.
--   * Like Koha, there is no index on old_issues.returndate.

CREATE TABLE branches (
  branchcode VARCHAR(10) NOT NULL DEFAULT '' PRIMARY KEY,
  branchname LONGTEXT NOT NULL
);

CREATE TABLE categories (
  categorycode VARCHAR(10) NOT NULL DEFAULT '' PRIMARY KEY,
  description LONGTEXT DEFAULT NULL,
  -- 'A' adult, 'C' child, 'S' staff, 'P' professional, 'I' organization, 'X' statistical
  category_type VARCHAR(1) NOT NULL DEFAULT 'A',
  default_privacy VARCHAR(7) NOT NULL DEFAULT 'default'
    CHECK (default_privacy IN ('default', 'never', 'forever'))
);

CREATE TABLE borrowers (
  borrowernumber INTEGER PRIMARY KEY AUTOINCREMENT,
  cardnumber VARCHAR(32) DEFAULT NULL,
  surname LONGTEXT DEFAULT NULL,
  firstname MEDIUMTEXT DEFAULT NULL,
  middle_name LONGTEXT DEFAULT NULL,
  othernames LONGTEXT DEFAULT NULL,
  address LONGTEXT DEFAULT NULL,
  city LONGTEXT DEFAULT NULL,
  zipcode TINYTEXT DEFAULT NULL,
  email LONGTEXT DEFAULT NULL,
  phone MEDIUMTEXT DEFAULT NULL,
  dateofbirth DATE DEFAULT NULL,
  branchcode VARCHAR(10) NOT NULL DEFAULT ''
    REFERENCES branches (branchcode),
  categorycode VARCHAR(10) NOT NULL DEFAULT ''
    REFERENCES categories (categorycode),
  dateenrolled DATE DEFAULT NULL,
  dateexpiry DATE DEFAULT NULL,
  borrowernotes LONGTEXT DEFAULT NULL,
  sex VARCHAR(1) DEFAULT NULL,
  password VARCHAR(60) DEFAULT NULL,
  -- permission bits; 1 = superlibrarian; NULL or 0 = no staff permissions
  flags BIGINT DEFAULT NULL,
  userid VARCHAR(75) DEFAULT NULL,
  -- 0 keep history forever, 1 default, 2 anonymize at once
  privacy INT NOT NULL DEFAULT 1,
  updated_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
  lastseen DATETIME DEFAULT NULL,
  protected TINYINT(1) NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX borrowers_cardnumber ON borrowers (cardnumber);
CREATE UNIQUE INDEX borrowers_userid ON borrowers (userid);
CREATE INDEX borrowers_categorycode ON borrowers (categorycode);
CREATE INDEX borrowers_branchcode ON borrowers (branchcode);
CREATE INDEX surname_idx ON borrowers (surname);
CREATE INDEX firstname_idx ON borrowers (firstname);
CREATE INDEX othernames_idx ON borrowers (othernames);
CREATE INDEX middle_name_idx ON borrowers (middle_name);

CREATE TABLE borrower_relationships (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  guarantor_id INT NOT NULL
    REFERENCES borrowers (borrowernumber) ON DELETE CASCADE ON UPDATE CASCADE,
  guarantee_id INT NOT NULL
    REFERENCES borrowers (borrowernumber) ON DELETE CASCADE ON UPDATE CASCADE,
  relationship VARCHAR(100) NOT NULL
);
CREATE UNIQUE INDEX guarantor_guarantee_idx ON borrower_relationships (guarantor_id, guarantee_id);
CREATE INDEX r_guarantee ON borrower_relationships (guarantee_id);

CREATE TABLE biblio (
  biblionumber INTEGER PRIMARY KEY AUTOINCREMENT,
  frameworkcode VARCHAR(4) NOT NULL DEFAULT '',
  author LONGTEXT DEFAULT NULL,
  title LONGTEXT DEFAULT NULL,
  timestamp TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
  datecreated DATE NOT NULL
);

CREATE TABLE biblioitems (
  biblioitemnumber INTEGER PRIMARY KEY AUTOINCREMENT,
  biblionumber INT NOT NULL DEFAULT 0
    REFERENCES biblio (biblionumber) ON DELETE CASCADE ON UPDATE CASCADE,
  itemtype VARCHAR(10) DEFAULT NULL,
  isbn LONGTEXT DEFAULT NULL,
  publicationyear MEDIUMTEXT DEFAULT NULL,
  timestamp TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
);
CREATE INDEX bibnoidx ON biblioitems (biblionumber);

CREATE TABLE items (
  itemnumber INTEGER PRIMARY KEY AUTOINCREMENT,
  biblionumber INT NOT NULL DEFAULT 0
    REFERENCES biblio (biblionumber) ON DELETE CASCADE ON UPDATE CASCADE,
  biblioitemnumber INT NOT NULL DEFAULT 0
    REFERENCES biblioitems (biblioitemnumber) ON DELETE CASCADE ON UPDATE CASCADE,
  barcode VARCHAR(20) DEFAULT NULL,
  dateaccessioned DATE DEFAULT NULL,
  homebranch VARCHAR(10) DEFAULT NULL
    REFERENCES branches (branchcode) ON UPDATE CASCADE,
  holdingbranch VARCHAR(10) DEFAULT NULL
    REFERENCES branches (branchcode) ON UPDATE CASCADE,
  itemcallnumber VARCHAR(255) DEFAULT NULL,
  timestamp TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
);
CREATE UNIQUE INDEX itembarcodeidx ON items (barcode);
CREATE INDEX itembinoidx ON items (biblioitemnumber);
CREATE INDEX itembibnoidx ON items (biblionumber);
CREATE INDEX items_homebranch ON items (homebranch);
CREATE INDEX items_holdingbranch ON items (holdingbranch);

-- Current checkouts. A patron with a checkout cannot be deleted (no ON DELETE).
CREATE TABLE issues (
  issue_id INTEGER PRIMARY KEY AUTOINCREMENT,
  borrowernumber INT NOT NULL
    REFERENCES borrowers (borrowernumber) ON UPDATE CASCADE,
  issuer_id INT DEFAULT NULL
    REFERENCES borrowers (borrowernumber) ON DELETE SET NULL ON UPDATE CASCADE,
  itemnumber INT NOT NULL
    REFERENCES items (itemnumber) ON UPDATE CASCADE,
  date_due DATETIME DEFAULT NULL,
  branchcode VARCHAR(10) DEFAULT NULL,
  returndate DATETIME DEFAULT NULL,
  lastreneweddate DATETIME DEFAULT NULL,
  renewals_count TINYINT NOT NULL DEFAULT 0,
  timestamp TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
  issuedate DATETIME DEFAULT NULL,
  note LONGTEXT DEFAULT NULL
);
CREATE UNIQUE INDEX issues_itemnumber ON issues (itemnumber);
CREATE INDEX issuesborridx ON issues (borrowernumber);
CREATE INDEX issues_branchcode_idx ON issues (branchcode);
CREATE INDEX bordate ON issues (borrowernumber, timestamp);
CREATE INDEX issues_ibfk_borrowers_borrowernumber ON issues (issuer_id);

-- Returned checkouts (circulation history).
CREATE TABLE old_issues (
  issue_id INTEGER NOT NULL PRIMARY KEY,
  borrowernumber INT DEFAULT NULL
    REFERENCES borrowers (borrowernumber) ON DELETE SET NULL ON UPDATE SET NULL,
  issuer_id INT DEFAULT NULL
    REFERENCES borrowers (borrowernumber) ON DELETE SET NULL ON UPDATE CASCADE,
  itemnumber INT DEFAULT NULL
    REFERENCES items (itemnumber) ON DELETE SET NULL ON UPDATE SET NULL,
  date_due DATETIME DEFAULT NULL,
  branchcode VARCHAR(10) DEFAULT NULL,
  returndate DATETIME DEFAULT NULL,
  lastreneweddate DATETIME DEFAULT NULL,
  renewals_count TINYINT NOT NULL DEFAULT 0,
  timestamp TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
  issuedate DATETIME DEFAULT NULL,
  note LONGTEXT DEFAULT NULL
);
CREATE INDEX old_issuesborridx ON old_issues (borrowernumber);
CREATE INDEX old_issuesitemidx ON old_issues (itemnumber);
CREATE INDEX old_issues_branchcode_idx ON old_issues (branchcode);
CREATE INDEX old_bordate ON old_issues (borrowernumber, timestamp);
CREATE INDEX old_issues_ibfk_borrowers_borrowernumber ON old_issues (issuer_id);

-- Renewals of checkouts (Koha 22.11 and later): who renewed (renewer_id: the patron in
-- the OPAC, or staff) and when. checkout_id is issues.issue_id, then old_issues.issue_id
-- once returned; Koha gives it no foreign key and no index.
CREATE TABLE checkout_renewals (
  renewal_id INTEGER PRIMARY KEY AUTOINCREMENT,
  checkout_id INT DEFAULT NULL,
  renewer_id INT DEFAULT NULL
    REFERENCES borrowers (borrowernumber) ON DELETE SET NULL ON UPDATE CASCADE,
  seen TINYINT DEFAULT 0,
  interface VARCHAR(16) NOT NULL,
  timestamp TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
  renewal_type TEXT NOT NULL DEFAULT 'Manual' CHECK (renewal_type IN ('Automatic', 'Manual'))
);
CREATE INDEX checkout_renewals_renewer_id ON checkout_renewals (renewer_id);

-- Current holds.
CREATE TABLE reserves (
  reserve_id INTEGER PRIMARY KEY AUTOINCREMENT,
  borrowernumber INT NOT NULL DEFAULT 0
    REFERENCES borrowers (borrowernumber) ON DELETE CASCADE ON UPDATE CASCADE,
  reservedate DATE DEFAULT NULL,
  biblionumber INT NOT NULL DEFAULT 0
    REFERENCES biblio (biblionumber) ON DELETE CASCADE ON UPDATE CASCADE,
  branchcode VARCHAR(10) NOT NULL
    REFERENCES branches (branchcode) ON DELETE CASCADE ON UPDATE CASCADE,
  cancellationdate DATE DEFAULT NULL,
  reservenotes LONGTEXT DEFAULT NULL,
  priority SMALLINT NOT NULL DEFAULT 1,
  -- NULL pending, 'W' waiting, 'T' in transit, 'P' processing, 'F' filled (old_reserves)
  found VARCHAR(1) DEFAULT NULL,
  timestamp TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
  itemnumber INT DEFAULT NULL
    REFERENCES items (itemnumber) ON DELETE CASCADE ON UPDATE CASCADE,
  waitingdate DATE DEFAULT NULL,
  expirationdate DATE DEFAULT NULL
);
CREATE INDEX priorityfoundidx ON reserves (priority, found);
CREATE INDEX reserves_borrowernumber ON reserves (borrowernumber);
CREATE INDEX reserves_biblionumber ON reserves (biblionumber);
CREATE INDEX reserves_itemnumber ON reserves (itemnumber);
CREATE INDEX reserves_branchcode ON reserves (branchcode);

-- Holds history (filled, cancelled or expired holds).
CREATE TABLE old_reserves (
  reserve_id INTEGER NOT NULL PRIMARY KEY,
  borrowernumber INT DEFAULT NULL
    REFERENCES borrowers (borrowernumber) ON DELETE SET NULL ON UPDATE SET NULL,
  reservedate DATE DEFAULT NULL,
  biblionumber INT DEFAULT NULL
    REFERENCES biblio (biblionumber) ON DELETE SET NULL ON UPDATE SET NULL,
  branchcode VARCHAR(10) DEFAULT NULL
    REFERENCES branches (branchcode) ON DELETE SET NULL ON UPDATE CASCADE,
  cancellationdate DATE DEFAULT NULL,
  reservenotes LONGTEXT DEFAULT NULL,
  priority SMALLINT NOT NULL DEFAULT 1,
  found VARCHAR(1) DEFAULT NULL,
  timestamp TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
  itemnumber INT DEFAULT NULL
    REFERENCES items (itemnumber) ON DELETE SET NULL ON UPDATE SET NULL,
  waitingdate DATE DEFAULT NULL,
  expirationdate DATE DEFAULT NULL
);
CREATE INDEX old_reserves_borrowernumber ON old_reserves (borrowernumber);
CREATE INDEX old_reserves_biblionumber ON old_reserves (biblionumber);
CREATE INDEX old_reserves_itemnumber ON old_reserves (itemnumber);
CREATE INDEX old_reserves_branchcode ON old_reserves (branchcode);

-- Reference tables for accountlines.credit_type_code / debit_type_code.
CREATE TABLE account_credit_types (
  code VARCHAR(80) NOT NULL PRIMARY KEY,
  description VARCHAR(200) DEFAULT NULL,
  can_be_added_manually TINYINT NOT NULL DEFAULT 1,
  is_system TINYINT(1) NOT NULL DEFAULT 0
);

CREATE TABLE account_debit_types (
  code VARCHAR(80) NOT NULL PRIMARY KEY,
  description VARCHAR(200) DEFAULT NULL,
  can_be_invoiced TINYINT(1) NOT NULL DEFAULT 1,
  is_system TINYINT(1) NOT NULL DEFAULT 0
);

-- Fines (debits, amount > 0) and payments/credits (amount < 0); amounts in the
-- library's currency. amountoutstanding > 0 is debt, < 0 is unused credit.
CREATE TABLE accountlines (
  accountlines_id INTEGER PRIMARY KEY AUTOINCREMENT,
  issue_id INT DEFAULT NULL
    REFERENCES issues (issue_id) ON DELETE SET NULL ON UPDATE CASCADE,
  old_issue_id INT DEFAULT NULL
    REFERENCES old_issues (issue_id) ON DELETE SET NULL ON UPDATE CASCADE,
  borrowernumber INT DEFAULT NULL
    REFERENCES borrowers (borrowernumber) ON DELETE SET NULL ON UPDATE CASCADE,
  itemnumber INT DEFAULT NULL
    REFERENCES items (itemnumber) ON DELETE SET NULL ON UPDATE CASCADE,
  date TIMESTAMP NULL DEFAULT NULL,
  amount DECIMAL(28,6) DEFAULT NULL,
  description LONGTEXT DEFAULT NULL,
  credit_type_code VARCHAR(80) DEFAULT NULL
    REFERENCES account_credit_types (code) ON UPDATE CASCADE,
  debit_type_code VARCHAR(80) DEFAULT NULL
    REFERENCES account_debit_types (code) ON UPDATE CASCADE,
  status VARCHAR(16) DEFAULT NULL,
  amountoutstanding DECIMAL(28,6) DEFAULT NULL,
  timestamp TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
  note MEDIUMTEXT DEFAULT NULL,
  manager_id INT DEFAULT NULL
    REFERENCES borrowers (borrowernumber) ON DELETE SET NULL ON UPDATE CASCADE,
  interface VARCHAR(16) NOT NULL,
  branchcode VARCHAR(10) DEFAULT NULL
    REFERENCES branches (branchcode) ON DELETE SET NULL ON UPDATE CASCADE
);
CREATE INDEX acctsborridx ON accountlines (borrowernumber);
CREATE INDEX timeidx ON accountlines (timestamp);
CREATE INDEX accountlines_credit_type_code ON accountlines (credit_type_code);
CREATE INDEX accountlines_debit_type_code ON accountlines (debit_type_code);
CREATE INDEX accountlines_itemnumber ON accountlines (itemnumber);
CREATE INDEX accountlines_branchcode ON accountlines (branchcode);
CREATE INDEX accountlines_manager_id ON accountlines (manager_id);
CREATE INDEX accountlines_ibfk_old_issues ON accountlines (old_issue_id);
CREATE INDEX accountlines_ibfk_issues ON accountlines (issue_id);

-- Pending patron modification requests; borrowernumber 0 = self-registration
-- awaiting e-mail verification. No foreign key, as in Koha.
CREATE TABLE borrower_modifications (
  timestamp TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
  verification_token VARCHAR(255) NOT NULL DEFAULT '',
  changed_fields MEDIUMTEXT DEFAULT NULL,
  borrowernumber INT NOT NULL DEFAULT 0,
  cardnumber VARCHAR(32) DEFAULT NULL,
  surname LONGTEXT DEFAULT NULL,
  firstname MEDIUMTEXT DEFAULT NULL,
  email LONGTEXT DEFAULT NULL,
  dateexpiry DATE DEFAULT NULL,
  PRIMARY KEY (verification_token, borrowernumber)
);
CREATE INDEX borrower_modifications_verification_token ON borrower_modifications (verification_token);
CREATE INDEX borrower_modifications_borrowernumber ON borrower_modifications (borrowernumber);

CREATE TABLE systempreferences (
  variable VARCHAR(50) NOT NULL DEFAULT '' PRIMARY KEY,
  value MEDIUMTEXT NOT NULL,
  options LONGTEXT DEFAULT NULL,
  explanation MEDIUMTEXT DEFAULT NULL,
  type VARCHAR(20) DEFAULT NULL
);

-- The other tables that name a patron (Lethe's Koha profile covers each).
-- statistics and deletedborrowers have no primary key and no foreign key, as in Koha
-- (SQLite gives them its implicit rowid).
CREATE TABLE statistics (
  datetime DATETIME DEFAULT NULL,
  branch VARCHAR(10) DEFAULT NULL,
  value DOUBLE(16,4) DEFAULT NULL,
  type VARCHAR(16) DEFAULT NULL,
  other LONGTEXT DEFAULT NULL,
  itemnumber INT DEFAULT NULL,
  itemtype VARCHAR(10) DEFAULT NULL,
  location VARCHAR(80) DEFAULT NULL,
  borrowernumber INT DEFAULT NULL,
  ccode VARCHAR(80) DEFAULT NULL,
  categorycode VARCHAR(10) DEFAULT NULL,
  interface VARCHAR(30) DEFAULT NULL
);
CREATE INDEX statistics_timeidx ON statistics (datetime);
CREATE INDEX statistics_type_idx ON statistics (type);
CREATE INDEX statistics_borrowernumber_idx ON statistics (borrowernumber);

CREATE TABLE message_transport_types (
  message_transport_type VARCHAR(20) NOT NULL PRIMARY KEY
);

CREATE TABLE message_queue (
  message_id INTEGER PRIMARY KEY AUTOINCREMENT,
  borrowernumber INT DEFAULT NULL
    REFERENCES borrowers (borrowernumber) ON DELETE CASCADE ON UPDATE CASCADE,
  subject MEDIUMTEXT DEFAULT NULL,
  content MEDIUMTEXT DEFAULT NULL,
  letter_code VARCHAR(64) DEFAULT NULL,
  message_transport_type VARCHAR(20) NOT NULL
    REFERENCES message_transport_types (message_transport_type) ON UPDATE CASCADE,
  status VARCHAR(8) NOT NULL DEFAULT 'pending'
    CHECK (status IN ('sent', 'pending', 'failed', 'deleted')),
  time_queued TIMESTAMP NULL DEFAULT NULL,
  updated_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
  to_address LONGTEXT DEFAULT NULL,
  from_address LONGTEXT DEFAULT NULL
);
CREATE INDEX message_queue_borrowernumber ON message_queue (borrowernumber);

-- No foreign key: user is the staff member, object the borrowernumber for patron modules.
CREATE TABLE action_logs (
  action_id INTEGER PRIMARY KEY AUTOINCREMENT,
  timestamp TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
  user INT NOT NULL DEFAULT 0,
  module MEDIUMTEXT DEFAULT NULL,
  action MEDIUMTEXT DEFAULT NULL,
  object INT DEFAULT NULL,
  info MEDIUMTEXT DEFAULT NULL,
  interface VARCHAR(30) DEFAULT NULL,
  diff LONGTEXT DEFAULT NULL
);
CREATE INDEX action_logs_timestamp_idx ON action_logs (timestamp);
CREATE INDEX action_logs_object_idx ON action_logs (object);

-- No foreign key: userid is the borrowernumber.
CREATE TABLE search_history (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  userid INT NOT NULL,
  sessionid VARCHAR(32) NOT NULL,
  query_desc VARCHAR(255) NOT NULL,
  query_cgi MEDIUMTEXT NOT NULL,
  type VARCHAR(16) NOT NULL DEFAULT 'biblio',
  total INT NOT NULL,
  time TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
);
CREATE INDEX search_history_userid ON search_history (userid);

CREATE TABLE deletedborrowers (
  borrowernumber INT NOT NULL DEFAULT 0,
  cardnumber VARCHAR(32) DEFAULT NULL,
  surname LONGTEXT DEFAULT NULL,
  firstname MEDIUMTEXT DEFAULT NULL,
  address LONGTEXT DEFAULT NULL,
  city LONGTEXT DEFAULT NULL,
  email LONGTEXT DEFAULT NULL,
  phone MEDIUMTEXT DEFAULT NULL,
  dateofbirth DATE DEFAULT NULL,
  branchcode VARCHAR(10) NOT NULL DEFAULT '',
  categorycode VARCHAR(10) NOT NULL DEFAULT '',
  dateexpiry DATE DEFAULT NULL,
  userid VARCHAR(75) DEFAULT NULL,
  updated_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
);
CREATE INDEX deletedborrowers_borrowernumber ON deletedborrowers (borrowernumber);

CREATE TABLE suggestions (
  suggestionid INTEGER PRIMARY KEY AUTOINCREMENT,
  suggestedby INT DEFAULT NULL
    REFERENCES borrowers (borrowernumber) ON DELETE SET NULL ON UPDATE CASCADE,
  suggesteddate DATE NOT NULL,
  managedby INT DEFAULT NULL
    REFERENCES borrowers (borrowernumber) ON DELETE SET NULL ON UPDATE CASCADE,
  manageddate DATE DEFAULT NULL,
  STATUS VARCHAR(10) NOT NULL DEFAULT '',
  note LONGTEXT DEFAULT NULL,
  staff_note LONGTEXT DEFAULT NULL,
  author VARCHAR(80) DEFAULT NULL,
  title VARCHAR(255) DEFAULT NULL,
  patronreason MEDIUMTEXT DEFAULT NULL,
  branchcode VARCHAR(10) DEFAULT NULL
);
CREATE INDEX suggestions_suggestedby ON suggestions (suggestedby);

CREATE TABLE illrequests (
  illrequest_id INTEGER PRIMARY KEY AUTOINCREMENT,
  borrowernumber INT DEFAULT NULL
    REFERENCES borrowers (borrowernumber) ON DELETE SET NULL ON UPDATE CASCADE,
  branchcode VARCHAR(50) NOT NULL,
  status VARCHAR(50) DEFAULT NULL,
  placed DATE DEFAULT NULL,
  completed DATE DEFAULT NULL,
  notesopac MEDIUMTEXT DEFAULT NULL,
  notesstaff MEDIUMTEXT DEFAULT NULL
);
CREATE INDEX illrequests_bnfk ON illrequests (borrowernumber);

CREATE TABLE return_claims (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  itemnumber INT NOT NULL
    REFERENCES items (itemnumber) ON DELETE CASCADE ON UPDATE CASCADE,
  issue_id INT DEFAULT NULL,
  borrowernumber INT NOT NULL
    REFERENCES borrowers (borrowernumber) ON DELETE CASCADE ON UPDATE CASCADE,
  notes MEDIUMTEXT DEFAULT NULL,
  created_on TIMESTAMP NULL DEFAULT NULL,
  resolution VARCHAR(80) DEFAULT NULL,
  resolved_on TIMESTAMP NULL DEFAULT NULL,
  UNIQUE (itemnumber, issue_id)
);
CREATE INDEX return_claims_borrowernumber ON return_claims (borrowernumber);

CREATE TABLE items_last_borrower (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  itemnumber INT NOT NULL UNIQUE
    REFERENCES items (itemnumber) ON DELETE CASCADE ON UPDATE CASCADE,
  borrowernumber INT NOT NULL
    REFERENCES borrowers (borrowernumber) ON DELETE CASCADE ON UPDATE CASCADE,
  created_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
);
CREATE INDEX items_last_borrower_borrowernumber ON items_last_borrower (borrowernumber);

CREATE TABLE pseudonymized_transactions (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  hashed_borrowernumber VARCHAR(60) NOT NULL,
  has_cardnumber TINYINT(1) NOT NULL DEFAULT 0,
  categorycode VARCHAR(10) NOT NULL,
  branchcode VARCHAR(10) NOT NULL,
  datetime DATETIME DEFAULT NULL,
  transaction_branchcode VARCHAR(10) DEFAULT NULL,
  transaction_type VARCHAR(16) DEFAULT NULL,
  itemnumber INT DEFAULT NULL,
  itemtype VARCHAR(10) DEFAULT NULL
);
CREATE INDEX pseudonymized_transactions_datetime ON pseudonymized_transactions (datetime);

CREATE TABLE patron_consent (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  borrowernumber INT NOT NULL
    REFERENCES borrowers (borrowernumber) ON DELETE CASCADE ON UPDATE CASCADE,
  type TINYTEXT DEFAULT NULL,
  given_on DATETIME DEFAULT NULL,
  refused_on DATETIME DEFAULT NULL
);
CREATE INDEX patron_consent_borrowernumber ON patron_consent (borrowernumber);
